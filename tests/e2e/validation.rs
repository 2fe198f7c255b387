//! Bad input is refused with a message that names the field or file and what would be valid
//! (exit code 2), before anything runs.

use crate::harness::*;
use serde_json::json;

fn refused(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 2, "{run:?}");
    for n in needles {
        assert!(run.stderr.contains(n), "expected {n:?} in the error: {run:?}");
    }
}

#[test]
fn malformed_json_names_the_file_and_the_position() {
    let sm = Smlocal::new();
    let file = sm.home.path().join("broken.json");
    std::fs::write(&file, "{\"TrainingJobName\": \"x\",\n  \"RoleArn\": }").unwrap();
    let run = Run::from(sm.command().arg("train").arg(&file).output().unwrap());
    refused(&run, &["broken.json: invalid request", "line 2"]);
    let missing = Run::from(sm.command().args(["train", "/no/such/request.json"]).output().unwrap());
    refused(&missing, &["cannot read the request file '/no/such/request.json'"]);
}

#[test]
fn the_request_can_come_from_stdin() {
    let (sm, bucket) = with_data("stdin");
    let req = probe_request("stdin-job", &bucket, &["echo", "from-stdin"]);
    let mut child = sm
        .command()
        .args(["train", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &serde_json::to_vec(&req).unwrap()).unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("algo-1 | from-stdin"));
}

#[test]
fn invalid_names_unknown_fields_and_instance_types_are_refused_in_aws_words() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("invalid-{}", unique()));
    let mut req = request("bad_name!", PROBE_IMAGE, &bucket);
    refused(
        &sm.train(&req, &[]),
        &[
            "Value 'bad_name!' at 'trainingJobName' failed to satisfy constraint: Member must satisfy regular expression pattern",
        ],
    );

    req["TrainingJobName"] = json!("typo-job");
    req["HyperParameter"] = json!({"a": "1"});
    refused(
        &sm.train(&req, &[]),
        &["Unknown parameter in input: \"HyperParameter\" (did you mean \"HyperParameters\"?)"],
    );

    req.as_object_mut().unwrap().remove("HyperParameter");
    req["ResourceConfig"]["InstanceType"] = json!("ml.m5.huge");
    refused(
        &sm.train(&req, &[]),
        &[
            "Value 'ml.m5.huge' at 'resourceConfig.instanceType' failed to satisfy constraint: Member must satisfy enum value set",
        ],
    );

    req["ResourceConfig"]["InstanceType"] = json!("ml.m5.24xlarge");
    req["ResourceConfig"]["InstanceCount"] = json!(3);
    refused(
        &sm.train(&req, &[]),
        &["ResourceConfig asks for 1.1 TiB of memory (3 × ml.m5.24xlarge at 384.0 GiB)", "--oversubscribe"],
    );
    assert!(!sm.job_dir("typo-job").exists(), "a refused request must leave no record");
}

#[test]
fn a_missing_image_is_named_and_nothing_is_recorded() {
    let (sm, bucket) = with_data("noimage");
    let req = request("noimage-job", "smlocal/does-not-exist:1.0", &bucket);
    refused(&sm.train(&req, &[]), &["image 'smlocal/does-not-exist:1.0' is not on this machine"]);
    assert!(!sm.job_dir("noimage-job").exists());
}

#[test]
fn a_duplicate_name_is_resource_in_use_and_unique_name_gets_a_fresh_one() {
    let (sm, bucket) = with_data("dup");
    let req = probe_request("dup-job", &bucket, &["echo", "hi"]);
    assert_eq!(sm.train(&req, &[]).code, 0);
    refused(
        &sm.train(&req, &[]),
        &["ResourceInUse", "arn:aws:sagemaker:us-west-2:123456789012:training-job/dup-job", "--unique-name"],
    );
    let again = sm.train(&req, &["--unique-name"]);
    assert_eq!(again.code, 0, "{again:?}");
    let list = String::from_utf8(sm.command().arg("list").output().unwrap().stdout).unwrap();
    let names: Vec<&str> = list.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(names[0].starts_with("dup-job-20") && names[1] == "dup-job", "newest first: {list}");
}

#[test]
fn a_missing_input_bucket_fails_the_job_with_a_client_error() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("nobucket-{}", unique()));
    let mut req = probe_request("nobucket-job", &bucket, &["echo", "must not run"]);
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!("s3://no-such-input-bucket/train/");
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let reason = sm.describe("nobucket-job")["FailureReason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("ClientError: Data download failed: channel 'train'")
            && reason.contains("no-such-input-bucket"),
        "{reason}"
    );
}

#[test]
fn an_unreachable_endpoint_is_named() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("unreachable-{}", unique()));
    let req = probe_request("unreachable-job", &bucket, &["echo", "x"]);
    let file = sm.home.path().join("unreachable.json");
    std::fs::write(&file, serde_json::to_vec(&req).unwrap()).unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let run =
        Run::from(sm.command().env("AWS_ENDPOINT_URL", "http://127.0.0.1:1").arg("train").arg(&file).output().unwrap());
    refused(&run, &["cannot reach S3", "http://127.0.0.1:1"]);
}

#[test]
fn describe_of_an_unknown_job_says_so() {
    let sm = Smlocal::new();
    let run = Run::from(sm.command().args(["describe", "never-ran"]).output().unwrap());
    refused(&run, &["no training job named 'never-ran'"]);
}
