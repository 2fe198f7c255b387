//! Channels: S3Prefix and ManifestFile from s3:// and file://, byte-identical, keys placed at
//! key-minus-prefix, the user's data never written, traversal keys refused (DESIGN §5).

use crate::harness::*;
use serde_json::json;

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

#[test]
fn s3_prefix_objects_arrive_byte_identical_at_key_minus_prefix() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("prefix-{}", unique()));
    let big = bytes(7, 3 << 20);
    bucket.put("data/tr/a.bin", &big);
    bucket.put("data/tr/nested/deeper/b.csv", b"x,y\n");
    bucket.put("data/train2.csv", b"string prefix match\n");
    bucket.put("data/other/c.csv", b"not in the channel\n");
    let mut req = probe_request("prefix-job", &bucket, &["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"]);
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!(bucket.uri("data/tr"));
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let entries = tar_entries(&bucket.get("output/prefix-job/output/model.tar.gz").unwrap());
    assert_eq!(file_entry(&entries, "seen/a.bin"), big);
    assert_eq!(file_entry(&entries, "seen/nested/deeper/b.csv"), b"x,y\n");
    assert_eq!(file_entry(&entries, "seen/ain2.csv"), b"string prefix match\n");
    assert!(!entries.iter().any(|(p, _)| p.contains("c.csv")), "an object outside the prefix was staged");
}

#[test]
fn a_manifest_file_stages_the_listed_keys() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("manifest-{}", unique()));
    bucket.put("pool/one.csv", b"1\n");
    bucket.put("pool/sub/two.csv", b"2\n");
    bucket.put("pool/unlisted.csv", b"3\n");
    bucket.put(
        "manifests/train.json",
        format!(r#"[{{"prefix": "{}"}}, "one.csv", "sub/two.csv"]"#, bucket.uri("pool/")).as_bytes(),
    );
    let mut req = probe_request("manifest-job", &bucket, &["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"]);
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"] =
        json!({"S3DataType": "ManifestFile", "S3Uri": bucket.uri("manifests/train.json")});
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let entries = tar_entries(&bucket.get("output/manifest-job/output/model.tar.gz").unwrap());
    assert_eq!(file_entry(&entries, "seen/one.csv"), b"1\n");
    assert_eq!(file_entry(&entries, "seen/sub/two.csv"), b"2\n");
    assert!(!entries.iter().any(|(p, _)| p.contains("unlisted")));
}

#[test]
fn file_uris_work_and_the_algorithm_cannot_change_the_users_data() {
    let sm = Smlocal::new();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("train/sub")).unwrap();
    std::fs::write(data.path().join("train/a.csv"), b"original\n").unwrap();
    std::fs::write(data.path().join("train/sub/b.csv"), b"kept\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let bucket = s3().bucket(&format!("local-{}", unique()));
    let mut req = probe_request(
        "local-job",
        &bucket,
        &[
            "write",
            "/opt/ml/input/data/train/a.csv",
            "overwritten by the algorithm",
            "write",
            "/opt/ml/input/data/train/new.csv",
            "new",
            "cat",
            "/opt/ml/input/data/train/sub/b.csv",
            "write",
            "/opt/ml/model/m",
            "1",
        ],
    );
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] =
        json!(format!("file://{}/train/", data.path().display()));
    req["OutputDataConfig"]["S3OutputPath"] = json!(format!("file://{}/results", out.path().display()));
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("algo-1 | kept"), "{run:?}");
    assert!(run.stderr.contains("smlocal: downloaded 14 B of 14 B"), "file:// bytes are counted in the total: {run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {run:?}");
    assert_eq!(std::fs::read(data.path().join("train/a.csv")).unwrap(), b"original\n");
    assert!(!data.path().join("train/new.csv").exists());
    let model = std::fs::read(out.path().join("results/local-job/output/model.tar.gz"))
        .expect("model.tar.gz in the file:// output path");
    assert_eq!(file_entry(&tar_entries(&model), "m"), b"1");
    assert!(out.path().join("results/local-job/output/output.tar.gz").exists());
}

#[test]
fn a_key_that_would_escape_the_channel_is_refused_by_name_and_nothing_is_written_outside() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("traversal-{}", unique()));
    bucket.put("pool/ok.csv", b"1\n");
    bucket.put("escape.csv", b"evil\n");
    bucket.put(
        "manifest.json",
        format!(r#"[{{"prefix": "{}"}}, "ok.csv", "../escape.csv"]"#, bucket.uri("pool/")).as_bytes(),
    );
    let mut req = probe_request("traversal-job", &bucket, &["echo", "must not run"]);
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"] =
        json!({"S3DataType": "ManifestFile", "S3Uri": bucket.uri("manifest.json")});
    let run = sm.train(&req, &["--keep"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains("must not run"), "{run:?}");
    let record = sm.describe("traversal-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    let reason = record["FailureReason"].as_str().unwrap();
    assert!(
        reason.starts_with("ClientError:")
            && reason.contains("'../escape.csv'")
            && reason.contains("outside the channel folder"),
        "{reason}"
    );
    let work = sm.job_dir("traversal-job").join("work/algo-1/input/data");
    let mut written = Vec::new();
    for entry in paths_below(&sm.job_dir("traversal-job")) {
        if entry.file_name().is_some_and(|n| n == "escape.csv") {
            written.push(entry);
        }
    }
    assert!(written.is_empty(), "escape.csv was written: {written:?} (work {})", work.display());
    remove_leftovers("traversal-job");
}

#[test]
fn a_channel_of_more_objects_than_open_files_allowed_is_staged_whole() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("nofile-{}", unique()));
    for i in 0..300 {
        bucket.put(&format!("train/part-{i:04}.csv"), format!("{i}\n").as_bytes());
    }
    let request = probe_request("nofile-job", &bucket, &["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"]);
    let file = sm.home.path().join("nofile-request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    // 96 open files, hard limit too: smlocal cannot raise it, and may not hold a file per object.
    let cmd = sm.command();
    let program = cmd.get_program().to_owned();
    let mut limited = std::process::Command::new("bash");
    limited
        .args(["-c", "ulimit -Hn 96 -Sn 96 && exec \"$0\" train \"$1\""])
        .arg(program)
        .arg(&file)
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .stdin(std::process::Stdio::null());
    let run = Run::from(limited.output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    let model = tar_entries(&bucket.get("output/nofile-job/output/model.tar.gz").unwrap());
    assert_eq!(model.iter().filter(|(p, _)| p.starts_with("seen/part-")).count(), 300);
    let partial: Vec<_> =
        std::fs::read_dir(sm.home.path().join("cache/tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(partial.is_empty(), "partial downloads were left: {partial:?}");
}

#[test]
fn keys_with_characters_s3_allows_are_staged_and_an_output_path_with_them_is_where_the_record_says() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("oddkeys-{}", unique()));
    let names = ["a#b.csv", "100%.csv", "über.csv", "[x]~y.csv", "q?.csv", "sp ace.csv"];
    for (i, name) in names.iter().enumerate() {
        bucket.put(&format!("train/{name}"), format!("{i}\n").as_bytes());
    }
    let mut request =
        probe_request("oddkeys-job", &bucket, &["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"]);
    request["OutputDataConfig"]["S3OutputPath"] = json!(bucket.uri("out #1/ü"));
    let run = sm.train(&request, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let record = sm.describe("oddkeys-job");
    let uri = record["ModelArtifacts"]["S3ModelArtifacts"].as_str().unwrap().to_string();
    let key = uri.splitn(4, '/').nth(3).unwrap();
    let archive = bucket.get(key).unwrap_or_else(|| panic!("no object at the key the record names: {key}"));
    let model = tar_entries(&archive);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(file_entry(&model, &format!("seen/{name}")), format!("{i}\n").as_bytes(), "{name}");
    }
}

#[test]
fn folder_markers_of_the_s3_console_are_not_data() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("markers-{}", unique()));
    // "Create folder" in the S3 console, for the channel's folder and a subfolder, one of
    // them holding data and one empty.
    s3().put_folder_marker(&bucket.name, "train/");
    s3().put_folder_marker(&bucket.name, "train/sub/");
    s3().put_folder_marker(&bucket.name, "train/empty/");
    bucket.put("train/sub/a.csv", b"1\n");
    bucket.put("train/b.csv", b"2\n");
    let request = probe_request("markers-job", &bucket, &["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"]);
    let run = sm.train(&request, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let model = tar_entries(&bucket.get("output/markers-job/output/model.tar.gz").unwrap());
    assert_eq!(file_entry(&model, "seen/sub/a.csv"), b"1\n");
    assert_eq!(file_entry(&model, "seen/b.csv"), b"2\n");
    let files: Vec<&String> = model.iter().filter(|(_, e)| !matches!(e, Entry::Dir)).map(|(p, _)| p).collect();
    assert_eq!(files.len(), 2, "only the two objects are files in the channel: {files:?}");
}

/// Starts `smlocal train` against `server` on a channel of many objects; returns the child,
/// once its download has begun.
fn staging_against(sm: &Smlocal, server: &S3Server, job: &str) -> std::process::Child {
    let bucket = server.bucket(job);
    for i in 0..96 {
        bucket.put(&format!("train/part-{i:03}.bin"), &pseudo_random(1 << 20, i));
    }
    let file = sm.home.path().join(format!("{job}.json"));
    std::fs::write(&file, probe_request(job, &bucket, &["train"]).to_string()).unwrap();
    let child = sm
        .command()
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("SMLOCAL_S3_TIMEOUT", "3")
        .arg("train")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = sm.home.path().join("cache/tmp");
    wait_until("the download's start", std::time::Duration::from_secs(30), || {
        std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some())
    });
    child
}

#[test]
fn a_server_that_freezes_mid_staging_fails_the_job_in_one_timeout_and_is_reported_as_stalled() {
    let server = S3Server::start();
    let sm = Smlocal::new();
    let child = staging_against(&sm, &server, "frozen");
    server.pause();
    let paused = std::time::Instant::now();
    let run = Run::from(child.wait_with_output().unwrap());
    let took = paused.elapsed();
    server.resume();
    assert_eq!(run.code, 1, "{run:?}");
    // Twelve rounds of eight requests would each have waited their own 3 s.
    assert!(took < std::time::Duration::from_secs(12), "failing took {took:?}: {run:?}");
    assert!(run.stderr.contains("staging stalled: nothing received from S3 at http://127.0.0.1"), "{run:?}");
    assert!(run.stderr.contains("Data download failed"), "{run:?}");
    assert_eq!(sm.describe("frozen")["TrainingJobStatus"], "Failed");
}

#[test]
fn a_server_that_dies_mid_staging_fails_the_job_at_once_and_one_that_is_dead_fails_it_before_staging() {
    let server = S3Server::start();
    let sm = Smlocal::new();
    let child = staging_against(&sm, &server, "dies");
    server.stop();
    let stopped = std::time::Instant::now();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(stopped.elapsed() < std::time::Duration::from_secs(10), "failing took {:?}: {run:?}", stopped.elapsed());
    assert!(run.stderr.contains("Data download failed"), "{run:?}");

    let file = sm.home.path().join("dies.json");
    let mut request: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    request["TrainingJobName"] = json!("dead");
    std::fs::write(&file, request.to_string()).unwrap();
    let started = std::time::Instant::now();
    let run =
        Run::from(sm.command().env("AWS_ENDPOINT_URL", &server.endpoint).arg("train").arg(&file).output().unwrap());
    // Not the job's failure: smlocal cannot reach the storage the request names at all.
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("Connection refused"), "{run:?}");
    assert_eq!(run.stderr.matches("Connection refused").count(), 1, "the cause is said once: {run:?}");
    let record = sm.command().args(["describe", "dead"]).output().unwrap();
    if record.status.success() {
        let record: serde_json::Value = serde_json::from_slice(&record.stdout).unwrap();
        assert_ne!(record["TrainingJobStatus"], "InProgress", "{record:#}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "failing took {:?}: {run:?}", started.elapsed());
    assert!(run.stderr.contains(&server.endpoint), "the message names the endpoint: {run:?}");
}

#[test]
fn a_channel_that_names_one_object_gets_it_under_its_own_name() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("oneobj-{}", unique()));
    bucket.put("code/sourcedir.tar.gz", b"the code");
    bucket.put("train/data.csv", b"1,2\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.csv"), b"3,4\n").unwrap();
    let steps = ["copy", "/opt/ml/input/data", "/opt/ml/model/seen"];
    let mut request = probe_request("oneobj-job", &bucket, &steps);
    let channel = |name: &str, uri: String| json!({"ChannelName": name, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}});
    request["InputDataConfig"] = json!([
        channel("code", bucket.uri("code/sourcedir.tar.gz")),
        channel("train", bucket.uri("train/data.csv")),
        channel("local", format!("file://{}/local.csv", dir.path().display())),
    ]);
    let run = sm.train(&request, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let model = tar_entries(&bucket.get("output/oneobj-job/output/model.tar.gz").unwrap());
    assert_eq!(file_entry(&model, "seen/code/sourcedir.tar.gz"), b"the code");
    assert_eq!(file_entry(&model, "seen/train/data.csv"), b"1,2\n");
    assert_eq!(file_entry(&model, "seen/local/local.csv"), b"3,4\n");
}
