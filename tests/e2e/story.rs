//! What users read after (and during) a run: checkpoints restored and synced, a replayed spot
//! interruption, metrics and their plot, logs followed live, list filters, rm and cleanup.

use crate::harness::*;
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn checkpoints_are_restored_before_start_and_synced_during_and_after_training() {
    let (sm, bucket) = with_data("ckpt");
    bucket.put("ckpt/keep.bin", b"from an earlier run");
    bucket.put("ckpt/old/stale.bin", b"to be deleted");
    let steps = [
        "cat",
        "/opt/ml/checkpoints/keep.bin",
        "echo",
        "",
        "write",
        "/opt/ml/checkpoints/during.bin",
        "synced while training",
        "echo",
        "written",
        "sleep",
        "4",
        "rm",
        "/opt/ml/checkpoints/old/stale.bin",
        "write",
        "/opt/ml/checkpoints/final.bin",
        "synced at the end",
    ];
    let mut req = probe_request("ckpt-job", &bucket, &steps);
    req["CheckpointConfig"] = json!({"S3Uri": bucket.uri("ckpt")});
    let (mut child, mut lines) = sm.spawn_train(&req, &["--checkpoint-interval", "1"]);
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        seen.push(line.clone());
        if line == "algo-1 | written" {
            break;
        }
    }
    assert!(seen.contains(&"algo-1 | from an earlier run".to_string()), "not restored: {seen:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while bucket.get("ckpt/during.bin").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        bucket.get("ckpt/during.bin").as_deref(),
        Some(&b"synced while training"[..]),
        "no sync while the job ran"
    );
    assert!(child.try_wait().unwrap().is_none(), "the job should still be running");
    let _: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(bucket.get("ckpt/final.bin").as_deref(), Some(&b"synced at the end"[..]));
    assert_eq!(bucket.get("ckpt/keep.bin").as_deref(), Some(&b"from an earlier run"[..]));
    assert_eq!(bucket.get("ckpt/old/stale.bin"), None, "a deleted checkpoint must be deleted at S3Uri too");
}

#[test]
fn file_checkpoints_at_a_custom_local_path_are_shared_by_every_host() {
    let (sm, bucket) = with_data("ckpt-local");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seed.txt"), "seed").unwrap();
    let steps = ["cat", "/ckpt/seed.txt", "echo", "", "write", "/ckpt/{host}.txt", "{host}"];
    let mut req = probe_request("ckpt-local-job", &bucket, &steps);
    req["ResourceConfig"] = json!({"InstanceType": "ml.t3.medium", "InstanceCount": 2, "VolumeSizeInGB": 1});
    req["CheckpointConfig"] = json!({"S3Uri": format!("file://{}", dir.path().display()), "LocalPath": "/ckpt"});
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.matches("| seed").count(), 2, "both hosts restore: {run:?}");
    for host in ["algo-1", "algo-2"] {
        assert_eq!(std::fs::read_to_string(dir.path().join(format!("{host}.txt"))).unwrap(), host);
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("seed.txt")).unwrap(), "seed");
}

#[test]
fn a_replayed_spot_interruption_resumes_from_the_checkpoint() {
    let (sm, bucket) = with_data("spot");
    // A resume check like a real algorithm's: finish if a checkpoint says so, else start over.
    let steps = [
        "on-term",
        "0",
        "only-if-exists",
        "/opt/ml/checkpoints/progress",
        "cat",
        "/opt/ml/checkpoints/progress",
        "echo",
        "",
        "echo",
        "resumed from checkpoint",
        "write",
        "/opt/ml/model/model.txt",
        "finished after a resume",
        "exit",
        "0",
        "all",
        "echo",
        "first attempt",
        "write",
        "/opt/ml/checkpoints/progress",
        "epoch 7",
        "sleep",
        "60",
    ];
    let mut req = probe_request("spot-job", &bucket, &steps);
    req["EnableManagedSpotTraining"] = json!(true);
    req["StoppingCondition"]["MaxWaitTimeInSeconds"] = json!(600);
    req["CheckpointConfig"] = json!({"S3Uri": bucket.uri("spot-ckpt/")});
    let run = sm.train(&req, &["--interrupt-after", "2s", "--stop-grace", "10"]);
    assert_eq!(run.code, 0, "{run:?}");
    let order: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| {
            l.contains("first attempt") || l.contains("SIGTERM") || l.contains("epoch 7") || l.contains("resumed")
        })
        .collect();
    assert_eq!(
        order,
        ["algo-1 | first attempt", "algo-1 | probe: SIGTERM", "algo-1 | epoch 7", "algo-1 | resumed from checkpoint"],
        "{run:?}"
    );
    let record = sm.describe("spot-job");
    assert_eq!(record["TrainingJobStatus"], "Completed");
    assert_eq!(record["SmlocalAttempts"], 2);
    let statuses = statuses(&record);
    assert_eq!(
        statuses,
        [
            "Starting",
            "Downloading",
            "Training",
            "Interrupted",
            "Restarting",
            "Downloading",
            "Training",
            "Uploading",
            "Completed"
        ]
    );
    let model = tar_entries(&bucket.get("output/spot-job/output/model.tar.gz").unwrap());
    assert_eq!(file_entry(&model, "model.txt"), b"finished after a resume");
    let log = std::fs::read_to_string(sm.job_dir("spot-job").join("logs/algo-1.log")).unwrap();
    assert!(log.contains("first attempt") && log.contains("resumed from checkpoint"), "both attempts are in the log");
}

#[test]
fn metric_definitions_give_final_values_a_table_and_a_plot() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("metrics-{}", unique()));
    let mut req = sample_request("metrics-job", &bucket, 40);
    req["AlgorithmSpecification"]["MetricDefinitions"] = json!([
        {"Name": "train:mse", "Regex": "train_mse=([0-9.]+)"},
        {"Name": "validation:mse", "Regex": "validation_mse=([0-9.]+)"},
        {"Name": "never:seen", "Regex": "accuracy=([0-9.]+)"}
    ]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let last_train: f64 = run
        .stdout
        .lines()
        .filter_map(|l| l.split("train_mse=").nth(1))
        .next_back()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let record = sm.describe("metrics-job");
    let finals = record["FinalMetricDataList"].as_array().unwrap();
    let names: Vec<&str> = finals.iter().map(|m| m["MetricName"].as_str().unwrap()).collect();
    assert_eq!(names, ["train:mse", "validation:mse"]);
    assert_eq!(finals[0]["Value"].as_f64().unwrap(), last_train);
    assert!(finals[0]["Timestamp"].is_number());
    for field in ["TrainingStartTime", "TrainingEndTime", "TrainingTimeInSeconds", "BillableTimeInSeconds"] {
        assert!(record[field].is_number(), "{field} missing from {record}");
    }

    let table = Run::from(sm.command().args(["metrics", "metrics-job"]).output().unwrap());
    assert_eq!(table.code, 0, "{table:?}");
    let train_row = table.stdout.lines().find(|l| l.starts_with("train:mse")).expect("a train:mse row");
    let cells: Vec<&str> = train_row.split_whitespace().collect();
    assert_eq!(cells[4], "40", "one point per epoch: {train_row}");
    assert!((cells[1].parse::<f64>().unwrap() - last_train).abs() < 1e-6);
    let plot = table.stdout.lines().find_map(|l| l.strip_prefix("plot: ")).expect("the plot's path");
    let svg = std::fs::read_to_string(plot).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count(), 2, "one line per metric on one host");
}

#[test]
fn logs_follow_a_job_that_another_process_runs_and_filter_by_host() {
    let (sm, bucket) = with_data("follow");
    let steps = ["echo", "early line", "sleep", "2", "echo", "late line from {host}"];
    let mut req = probe_request("follow-job", &bucket, &steps);
    req["ResourceConfig"] = json!({"InstanceType": "ml.t3.medium", "InstanceCount": 2, "VolumeSizeInGB": 1});
    let (mut child, mut lines) = sm.spawn_train(&req, &[]);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("early line")));
    // The job is running; follow it from another process.
    let follower = sm.command().args(["logs", "follow-job", "--follow"]).stdout(Stdio::piped()).spawn().unwrap();
    let _: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success());
    let text = String::from_utf8_lossy(&followed.stdout);
    for expected in [
        "algo-1 | early line",
        "algo-2 | early line",
        "algo-1 | late line from algo-1",
        "algo-2 | late line from algo-2",
    ] {
        assert!(text.lines().any(|l| l == expected), "{expected} missing from the followed logs:\n{text}");
    }
    let only = Run::from(sm.command().args(["logs", "follow-job", "--host", "algo-2"]).output().unwrap());
    assert_eq!(only.stdout, "algo-2 | early line\nalgo-2 | late line from algo-2\n");
    let wrong = Run::from(sm.command().args(["logs", "follow-job", "--host", "algo-9"]).output().unwrap());
    assert_eq!(wrong.code, 2);
    assert!(wrong.stderr.contains("its hosts are: algo-1, algo-2"), "{wrong:?}");
}

#[test]
fn list_filters_like_list_training_jobs() {
    let (sm, bucket) = with_data("filters");
    assert_eq!(sm.train(&probe_request("alpha-ok", &bucket, &["echo", "x"]), &[]).code, 0);
    let between = record_time(&sm, "alpha-ok") + 0.001;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(sm.train(&probe_request("beta-fails", &bucket, &["exit", "1"]), &[]).code, 1);
    assert_eq!(sm.train(&probe_request("alpha-two", &bucket, &["echo", "y"]), &[]).code, 0);
    let names = |args: &[&str]| -> Vec<String> {
        let out = sm.command().arg("list").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split_whitespace().next().unwrap().to_string()).collect()
    };
    assert_eq!(names(&[]), ["alpha-two", "beta-fails", "alpha-ok"]);
    assert_eq!(names(&["--status-equals", "Failed"]), ["beta-fails"]);
    assert_eq!(names(&["--name-contains", "ALPHA"]), ["alpha-two", "alpha-ok"]);
    assert_eq!(names(&["--max-results", "1"]), ["alpha-two"]);
    assert_eq!(names(&["--creation-time-after", &between.to_string()]), ["alpha-two", "beta-fails"]);
    assert_eq!(names(&["--creation-time-before", &between.to_string()]), ["alpha-ok"]);
    let bad = Run::from(sm.command().args(["list", "--status-equals", "Done"]).output().unwrap());
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("InProgress, Completed, Failed, Stopping or Stopped"), "{bad:?}");
}

fn record_time(sm: &Smlocal, name: &str) -> f64 {
    sm.describe(name)["CreationTime"].as_f64().unwrap()
}

#[test]
fn rm_deletes_the_record_but_not_the_uploaded_artifacts() {
    let (sm, bucket) = with_data("rm");
    assert_eq!(sm.train(&probe_request("rm-job", &bucket, &["write", "/opt/ml/model/m", "1"]), &[]).code, 0);
    let rm = Run::from(sm.command().args(["rm", "rm-job"]).output().unwrap());
    assert_eq!(rm.code, 0, "{rm:?}");
    assert!(!sm.job_dir("rm-job").exists());
    assert_eq!(Run::from(sm.command().args(["describe", "rm-job"]).output().unwrap()).code, 2);
    assert!(bucket.get("output/rm-job/output/model.tar.gz").is_some());
}

#[test]
fn cleanup_removes_what_a_killed_run_left_and_marks_it_failed() {
    let (sm, bucket) = with_data("cleanup");
    let mut req = probe_request("orphan-job", &bucket, &["echo", "ready", "sleep", "120"]);
    req["ResourceConfig"] = json!({"InstanceType": "ml.t3.medium", "InstanceCount": 2, "VolumeSizeInGB": 1});
    let (mut child, mut lines) = sm.spawn_train(&req, &[]);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.ends_with("| ready")));
    // SIGKILL: smlocal gets no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let (containers, networks) = leftovers("orphan-job");
    assert_eq!(
        (containers.lines().count(), networks.lines().count()),
        (2, 1),
        "the killed run should have left its cluster"
    );
    assert_eq!(sm.describe("orphan-job")["TrainingJobStatus"], "InProgress");

    let run = Run::from(sm.command().arg("cleanup").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(leftovers("orphan-job"), (String::new(), String::new()));
    assert_eq!(leftover_volumes("orphan-job"), "", "the overlay volumes must be removed too");
    let record = sm.describe("orphan-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    assert!(record["FailureReason"].as_str().unwrap().contains("ended before the job did"));
}

#[test]
fn cleanup_also_removes_what_a_deleted_state_directory_left() {
    let gone = Smlocal::new();
    let bucket = s3().bucket(&format!("cleanup-gone-{}", unique()));
    bucket.put("train/a.csv", b"1\n");
    let mut req = probe_request("gone-job", &bucket, &["echo", "x"]);
    req["ResourceConfig"] = json!({"InstanceType": "ml.t3.medium", "InstanceCount": 2, "VolumeSizeInGB": 1});
    assert_eq!(gone.train(&req, &["--keep"]).code, 0);
    assert_ne!(leftovers("gone-job"), (String::new(), String::new()));
    drop(gone);
    let other = Smlocal::new();
    let run = Run::from(other.command().arg("cleanup").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(leftovers("gone-job"), (String::new(), String::new()));
    assert_eq!(leftover_volumes("gone-job"), "");
}

#[test]
fn cleanup_removes_what_keep_left_as_keep_says_it_will() {
    let (sm, bucket) = with_data("keep-clean");
    let run = sm.train(&probe_request("keep-job", &bucket, &["write", "/opt/ml/model/m", "m"]), &["--keep"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("`smlocal cleanup` removes them"), "{run:?}");
    let work = sm.job_dir("keep-job").join("work");
    assert!(work.exists());
    let cleaned = Run::from(sm.command().arg("cleanup").output().unwrap());
    assert_eq!(cleaned.code, 0, "{cleaned:?}");
    assert!(!work.exists(), "the kept work folder was left: {cleaned:?}");
    assert_eq!(leftovers("keep-job"), (String::new(), String::new()));
    assert_eq!(sm.describe("keep-job")["TrainingJobStatus"], "Completed", "the record is untouched");
}

#[test]
fn a_runner_is_alive_only_while_it_holds_its_lock_not_because_its_pid_was_reused() {
    let (sm, bucket) = with_data("pidreuse");
    assert_eq!(sm.train(&probe_request("pidreuse-job", &bucket, &["train"]), &[]).code, 0);
    // The dead runner's PID now belongs to a live process (here: this test).
    as_if_its_runner_died(&sm, "pidreuse-job", &std::process::id().to_string());
    let run = Run::from(sm.command().arg("cleanup").output().unwrap());
    assert!(run.stderr.contains("marked 1 orphaned job(s) Failed"), "{run:?}");
    assert_eq!(sm.describe("pidreuse-job")["TrainingJobStatus"], "Failed");
}

#[test]
fn cleanup_aborts_the_multipart_upload_a_killed_run_left() {
    let server = S3Server::start();
    let sm = Smlocal::new();
    // Killed mid-upload (the server held still so the upload cannot finish first).
    let (mut run, _) = held_mid_upload(&sm, &server, "multipart-job");
    let bucket = server.bucket("multipart-job");
    let with_server = |mut cmd: std::process::Command| {
        cmd.env("AWS_ENDPOINT_URL", &server.endpoint);
        cmd
    };
    run.kill().unwrap();
    run.wait().unwrap();
    server.resume();
    assert_eq!(server.pending_uploads("multipart-job"), ["output/multipart-job/output/model.tar.gz"]);

    let cleaned = Run::from(with_server(sm.command()).arg("cleanup").output().unwrap());
    assert_eq!(cleaned.code, 0, "{cleaned:?}");
    assert!(server.pending_uploads("multipart-job").is_empty(), "the unfinished upload is still billed: {cleaned:?}");
    assert_eq!(sm.describe("multipart-job")["TrainingJobStatus"], "Failed");
    assert!(bucket.get("output/multipart-job/output/model.tar.gz").is_none());
}
