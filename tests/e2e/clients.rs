//! The other clients a user has, unchanged: the SageMaker Python SDK v3 (ModelTrainer and
//! sagemaker-core) and the AWS CLI v1, each in a process that may reach 127.0.0.1 only.

use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

fn value<'a>(run: &'a Run, key: &str) -> &'a str {
    run.stdout.lines().find_map(|l| l.split_once(key).map(|(_, v)| v)).unwrap_or_else(|| panic!("no {key}: {run:?}"))
}

#[test]
fn the_sagemaker_sdk_v3_model_trainer_and_sagemaker_core_run_unchanged() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("v3-{}", unique()));
    sample_request("unused", &bucket, 1); // the sample data under data/
    let local = sm.home.path().join("local-train");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("part.csv"), "1.0,0.5,0.25\n2.0,1.0,0.5\n3.0,1.5,0.75\n").unwrap();
    let server = sm.serve(&[]);
    let run = client_v3(
        &sm,
        &server,
        "sdk_v3.py",
        &[
            SAMPLE_IMAGE,
            &bucket.uri("data/train/"),
            &bucket.uri("v3-out"),
            &bucket.name,
            &local.join("part.csv").display().to_string(),
            PROBE_IMAGE,
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let jobs: Vec<&str> = run.stdout.lines().filter_map(|l| l.strip_prefix("job=")).collect();
    assert_eq!(jobs.len(), 2, "{run:?}");
    assert!(jobs.iter().all(|j| j.ends_with(" Completed")), "{jobs:?}");
    assert!(run.stdout.contains("epoch=5 train_mse="), "logs=True prints the job's lines: {run:?}");
    let two = jobs[0].split(' ').next().unwrap();
    assert_eq!(sm.describe(two)["ResourceConfig"]["InstanceCount"], 2);
    let local_job = jobs[1].split(' ').next().unwrap();
    let uploaded = &sm.describe(local_job)["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"];
    assert!(
        uploaded.as_str().unwrap().starts_with(&format!("s3://{}/", bucket.name)),
        "the SDK uploaded the folder: {uploaded}"
    );
    assert!(value(&run, "core_get=").starts_with(&format!("{local_job} Completed s3://")), "{run:?}");
    assert!(value(&run, "core_all=").contains(two), "{run:?}");
    assert_eq!(value(&run, "core_stopped="), "Stopped", "{run:?}");
}

#[test]
fn the_aws_cli_creates_waits_lists_stops_and_filters_logs_across_hosts() {
    let (sm, bucket) = with_data("cli");
    let server = sm.serve(&[]);
    let aws = |args: &[&str]| {
        let run = client_v3(&sm, &server, "aws", args);
        assert_eq!(run.code, 0, "aws {args:?}: {run:?}");
        serde_json::from_str::<Value>(run.stdout.trim()).unwrap_or(Value::Null)
    };
    let name = format!("cli-{}", unique());
    let mut request = sample_request(&name, &bucket, 10);
    request["ResourceConfig"]["InstanceCount"] = 2.into();
    let file = format!("file://{}", request_file(&sm, &request));
    let created = aws(&["sagemaker", "create-training-job", "--cli-input-json", &file]);
    assert!(created["TrainingJobArn"].as_str().unwrap().ends_with(&name), "{created}");
    wait_until("the job ends", Duration::from_secs(60), || {
        aws(&["sagemaker", "describe-training-job", "--training-job-name", &name])["TrainingJobStatus"] == "Completed"
    });
    // The waiter's first poll sees the end (it polls every 120 s after that).
    aws(&["sagemaker", "wait", "training-job-completed-or-stopped", "--training-job-name", &name]);

    // Every host's lines with a pattern, interleaved by time.
    let group = "/aws/sagemaker/TrainingJobs";
    let filtered = aws(&[
        "logs",
        "filter-log-events",
        "--log-group-name",
        group,
        "--log-stream-name-prefix",
        &format!("{name}/"),
        "--filter-pattern",
        "\"epoch=10 \" ?train_mse",
    ]);
    let events = filtered["events"].as_array().unwrap();
    let streams: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e["logStreamName"].as_str().unwrap()).collect();
    assert_eq!(streams.len(), 2, "events of both hosts: {filtered:#}");
    assert!(events.iter().all(|e| e["message"].as_str().unwrap().contains("epoch=10 ")), "{filtered:#}");
    let times: Vec<i64> = events.iter().map(|e| e["timestamp"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "interleaved by time: {times:?}");
    assert_eq!(filtered["searchedLogStreams"].as_array().unwrap().len(), 2, "{filtered}");
    // A page at a time (the CLI follows the tokens): the same events.
    let paged = aws(&[
        "logs",
        "filter-log-events",
        "--log-group-name",
        group,
        "--log-stream-name-prefix",
        &format!("{name}/"),
        "--filter-pattern",
        "\"epoch=10 \"",
        "--page-size",
        "1",
    ]);
    assert_eq!(paged["events"].as_array().unwrap().len(), events.len(), "{paged:#}");

    // Followed while it runs, as `aws logs tail --follow` does: every line once.
    let followed = format!("cli-follow-{}", unique());
    let mut request = sample_request(&followed, &bucket, 40);
    request["ResourceConfig"]["InstanceCount"] = 2.into();
    aws(&["sagemaker", "create-training-job", "--cli-input-json", &format!("file://{}", request_file(&sm, &request))]);
    let run = client_v3(&sm, &server, "boto3_calls.py", &["follow", &followed]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<String> = serde_json::from_str(run.stdout.trim()).unwrap();
    let logged = sm.command().args(["logs", &followed]).output().unwrap();
    let logged = String::from_utf8_lossy(&logged.stdout).lines().count();
    assert_eq!(lines.len(), logged, "every line of both hosts exactly once: {lines:?}");
    assert!(lines.iter().filter(|l| l.contains("epoch=40 ")).count() == 2, "{lines:?}");

    // A stop is Stopping at once, then Stopped (this one ignores SIGTERM: the server's 5 s
    // grace, then SIGKILL).
    let long = format!("cli-stop-{}", unique());
    let request = probe_request(&long, &bucket, &["sleep", "60"]);
    aws(&["sagemaker", "create-training-job", "--cli-input-json", &format!("file://{}", request_file(&sm, &request))]);
    wait_for(&sm, &long, "Training", |r| r["SecondaryStatus"] == "Training");
    aws(&["sagemaker", "stop-training-job", "--training-job-name", &long]);
    let described = aws(&["sagemaker", "describe-training-job", "--training-job-name", &long]);
    assert_eq!(described["TrainingJobStatus"], "Stopping", "{described:#}");
    wait_for(&sm, &long, "Stopped", |r| r["TrainingJobStatus"] == "Stopped");

    // Two jobs, one a page: the CLI pages with its own tokens.
    let first = aws(&["sagemaker", "list-training-jobs", "--max-items", "1"]);
    assert_eq!(first["TrainingJobSummaries"].as_array().unwrap().len(), 1, "{first}");
    let token = first["NextToken"].as_str().expect("a token for the next page").to_string();
    let next = aws(&["sagemaker", "list-training-jobs", "--max-items", "1", "--starting-token", &token]);
    assert_eq!(next["TrainingJobSummaries"].as_array().unwrap().len(), 1, "{next}");
    let none = aws(&["sagemaker", "list-training-jobs", "--warm-pool-status-equals", "Available"]);
    assert_eq!(none["TrainingJobSummaries"], serde_json::json!([]), "no job here has a warm pool: {none}");
}
