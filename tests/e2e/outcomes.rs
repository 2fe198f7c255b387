//! How jobs end: failures with their reasons, out of memory, symlinks in the model, a failed
//! upload, the stopping condition, and Ctrl-C — each leaving nothing behind.

use crate::harness::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn bad_hyperparameters_fail_the_sample_with_its_failure_file_and_artifacts_are_still_uploaded() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("fail-{}", unique()));
    bucket.put("train/data.csv", b"1,2\n3,4\n");
    let mut req = request("failing-job", SAMPLE_IMAGE, &bucket);
    req["HyperParameters"] = json!({"learning_rate": "fast"});
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let record = sm.describe("failing-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    assert_eq!(
        record["FailureReason"],
        "AlgorithmError: ClientError: hyperparameter learning_rate='fast' is not valid; expected a positive number such as 0.05",
        "the failure file, as SageMaker reports an algorithm's own reason"
    );
    assert!(
        run.stderr.contains("FailureReason: AlgorithmError: ClientError: hyperparameter learning_rate='fast'"),
        "{run:?}"
    );
    assert!(bucket.get("output/failing-job/output/model.tar.gz").is_some());
    assert!(bucket.get("output/failing-job/output/output.tar.gz").is_some());
    assert_eq!(leftovers("failing-job"), (String::new(), String::new()));
}

#[test]
fn a_non_zero_exit_without_failure_file_names_the_exit_code() {
    let (sm, bucket) = with_data("exit");
    let run = sm.train(&probe_request("exit-job", &bucket, &["stderr", "something broke", "exit", "3"]), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("algo-1 | something broke"), "stderr lines are streamed too: {run:?}");
    let reason = sm.describe("exit-job")["FailureReason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("AlgorithmError:") && reason.contains("exit code 3"), "{reason}");
}

#[test]
fn the_failure_reason_is_at_most_1024_characters() {
    let (sm, bucket) = with_data("long");
    // Entrypoint strings are at most 256 characters, so the probe appends 8 × 200.
    let chunk = "e".repeat(200);
    let mut steps = Vec::new();
    for _ in 0..8 {
        steps.extend(["append", "/opt/ml/output/failure", chunk.as_str()]);
    }
    steps.extend(["exit", "2"]);
    let run = sm.train(&probe_request("long-job", &bucket, &steps), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let reason = sm.describe("long-job")["FailureReason"].as_str().unwrap().to_string();
    assert_eq!(reason, format!("AlgorithmError: {}", "e".repeat(1024 - 16)));
}

#[test]
fn symlinks_in_the_model_folder_are_archived_as_links_never_followed() {
    let (sm, bucket) = with_data("links");
    let steps = [
        "write",
        "/opt/ml/model/weights.bin",
        "w",
        "symlink",
        "/etc/passwd",
        "/opt/ml/model/host-secret",
        "symlink",
        "/",
        "/opt/ml/model/root",
        "symlink",
        "weights.bin",
        "/opt/ml/model/latest",
    ];
    let run = sm.train(&probe_request("links-job", &bucket, &steps), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let entries = tar_entries(&bucket.get("output/links-job/output/model.tar.gz").unwrap());
    assert!(entries.contains(&("host-secret".to_string(), Entry::Link("/etc/passwd".into()))), "{entries:?}");
    // The tar crate writes a link to "/" as "//": the same path once resolved.
    assert!(
        entries
            .iter()
            .any(|(p, e)| p == "root"
                && matches!(e, Entry::Link(l) if std::path::Path::new(l) == std::path::Path::new("/"))),
        "{entries:?}"
    );
    assert!(entries.contains(&("latest".to_string(), Entry::Link("weights.bin".into()))), "{entries:?}");
    assert_eq!(entries.len(), 4, "a link was followed: {entries:?}");
}

#[test]
fn an_out_of_memory_kill_is_reported_with_the_limit() {
    let (sm, bucket) = with_data("oom");
    // Reserve all but 200 MiB of this machine so the container's cap is 200 MiB.
    let total = memory_total();
    let reserve = total - (200 << 20);
    let run = sm.train(
        &probe_request("oom-job", &bucket, &["alloc", "600", "echo", "survived"]),
        &["--memory-reserve", &reserve.to_string(), "--oversubscribe"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains("survived"), "{run:?}");
    let reason = sm.describe("oom-job")["FailureReason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("OutOfMemoryError") && reason.contains("200.0 MiB"), "{reason}");
}

#[test]
fn a_failed_upload_keeps_the_artifacts_and_says_where() {
    let (sm, bucket) = with_data("upload");
    let mut req = probe_request("upload-job", &bucket, &["write", "/opt/ml/model/precious.bin", "weights"]);
    // Nothing can create folders under /proc, not even root: the upload really fails.
    req["OutputDataConfig"]["S3OutputPath"] = json!("file:///proc/smlocal-test-output");
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let kept = sm.job_dir("upload-job").join("artifacts");
    assert!(run.stderr.contains(&kept.display().to_string()), "the message must say where the artifacts are: {run:?}");
    let model = std::fs::read(kept.join("model.tar.gz")).expect("model.tar.gz kept locally");
    assert_eq!(file_entry(&tar_entries(&model), "precious.bin"), b"weights");
    let record = sm.describe("upload-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    assert!(record["FailureReason"].as_str().unwrap().contains("/proc/smlocal-test-output"), "{record}");
}

#[test]
fn max_runtime_stops_the_job_with_sigterm_then_sigkill_and_collects_artifacts() {
    let (sm, bucket) = with_data("runtime");
    // This container ignores SIGTERM (PID 1 without a handler), so only SIGKILL ends it.
    let mut req = probe_request("runtime-job", &bucket, &["write", "/opt/ml/model/partial", "p", "sleep", "60"]);
    req["StoppingCondition"]["MaxRuntimeInSeconds"] = json!(2);
    let started = Instant::now();
    let run = sm.train(&req, &["--stop-grace", "1"]);
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let record = sm.describe("runtime-job");
    assert_eq!(record["TrainingJobStatus"], "Stopped");
    assert_eq!(record["SecondaryStatus"], "MaxRuntimeExceeded");
    assert!(record.get("FailureReason").is_none());
    assert_eq!(
        file_entry(&tar_entries(&bucket.get("output/runtime-job/output/model.tar.gz").unwrap()), "partial"),
        b"p"
    );
    assert_eq!(leftovers("runtime-job"), (String::new(), String::new()));
}

#[test]
fn ctrl_c_stops_the_container_gracefully_records_stopped_and_leaves_nothing_behind() {
    let (sm, bucket) = with_data("sigint");
    let req = probe_request(
        "sigint-job",
        &bucket,
        &["on-term", "0", "write", "/opt/ml/model/before", "b", "echo", "ready", "sleep", "60"],
    );
    let (mut child, mut lines) = sm.spawn_train(&req, &["--stop-grace", "10"]);
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l == "algo-1 | ready");
    assert!(ready, "the container never printed ready");
    let sent = Instant::now();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(took < Duration::from_secs(8), "the container handles SIGTERM, so no grace should be spent: {took:?}");
    assert!(rest.iter().any(|l| l == "algo-1 | probe: SIGTERM"), "the container never saw SIGTERM: {rest:?}");
    let record = sm.describe("sigint-job");
    assert_eq!(record["TrainingJobStatus"], "Stopped");
    let statuses = statuses(&record);
    assert_eq!(statuses, ["Starting", "Downloading", "Training", "Stopping", "Uploading", "Stopped"]);
    let output = tar_entries(&bucket.get("output/sigint-job/output/output.tar.gz").unwrap());
    assert_eq!(file_entry(&output, "sigterm"), b"terminated\n");
    assert_eq!(leftovers("sigint-job"), (String::new(), String::new()));
    assert_eq!(leftover_volumes("sigint-job"), "", "the overlay volumes must be removed too");
    assert!(!sm.job_dir("sigint-job").join("work").exists(), "work files were left behind");
}

#[test]
fn when_the_model_upload_fails_the_output_archive_is_kept_too() {
    let (sm, bucket) = with_data("upload-both");
    let steps = ["write", "/opt/ml/model/weights.bin", "w", "write", "/opt/ml/output/data/report.txt", "the report"];
    let mut req = probe_request("upload-both-job", &bucket, &steps);
    req["OutputDataConfig"]["S3OutputPath"] = json!("file:///proc/smlocal-test-output");
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let kept = sm.job_dir("upload-both-job").join("artifacts");
    let output = std::fs::read(kept.join("output.tar.gz")).expect("output.tar.gz kept beside model.tar.gz");
    assert_eq!(file_entry(&tar_entries(&output), "report.txt"), b"the report");
    assert!(kept.join("model.tar.gz").exists());
}

#[test]
fn an_entrypoint_missing_from_the_image_fails_the_job_not_smlocal() {
    let (sm, bucket) = with_data("noentry");
    let mut req = probe_request("noentry-job", &bucket, &["train"]);
    req["AlgorithmSpecification"]["ContainerEntrypoint"] = json!(["/usr/local/bin/not-in-the-image"]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 1, "a failed job, not an smlocal error: {run:?}");
    let record = sm.describe("noentry-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    let reason = record["FailureReason"].as_str().unwrap();
    assert!(reason.starts_with("AlgorithmError: the training container on algo-1 could not start"), "{reason}");
    assert!(reason.contains("not-in-the-image") && reason.contains("ContainerEntrypoint"), "{reason}");
    assert_eq!(leftovers("noentry-job"), (String::new(), String::new()));
}

/// A tmpfs of `bytes` mounted on a fresh folder, unmounted when dropped.
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    fn new(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs needs root (CI runs as root)");
        SmallDisk { dir: Some(dir) }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Bytes still free on it.
    fn free(&self) -> u64 {
        let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.path()).status();
    }
}

#[test]
fn a_full_state_disk_never_costs_the_model_and_the_record_still_ends() {
    images();
    let disk = SmallDisk::new(3 << 20);
    let sm = Smlocal { home: tempfile::tempdir_in(disk.path()).unwrap() };
    let bucket = s3().bucket(&format!("fulldisk-{}", unique()));
    let weights: Vec<u8> = (0..200u32 << 10).map(|i| (i % 251) as u8).collect();
    bucket.put("train/weights.bin", &weights);
    bucket.put("train/pad.bin", &vec![7u8; 400 << 10]);
    // Room for the cached inputs (600 KiB), the job's own files and the weights, not the pad:
    // the disk fills while the model is written, before the job's last records are saved.
    let free = disk.free();
    std::fs::write(disk.path().join("filler"), vec![0u8; (free - (1100 << 10)) as usize]).unwrap();
    let steps = [
        "copy",
        "/opt/ml/input/data/train/weights.bin",
        "/opt/ml/model/weights.bin",
        "may-fail",
        "copy",
        "/opt/ml/input/data/train/pad.bin",
        "/opt/ml/model/pad.bin",
        "copy",
        "/opt/ml/input/data/train/pad.bin",
        "/opt/ml/model/pad2.bin",
    ];
    let run = sm.train(&probe_request("fulldisk-job", &bucket, &steps), &[]);
    assert!(run.stdout.contains("No space left on device"), "the test must fill the disk: {run:?}");
    assert_eq!(run.code, 0, "the job completes although its record could not always be saved: {run:?}");
    let archive = bucket.get("output/fulldisk-job/output/model.tar.gz").expect("the model reached S3");
    assert_eq!(file_entry(&tar_entries(&archive), "weights.bin"), weights);
    let record = sm.describe("fulldisk-job");
    assert_eq!(record["TrainingJobStatus"], "Completed", "{record:#}");
}

#[test]
fn a_second_ctrl_c_sigkills_at_once_instead_of_waiting_out_the_grace() {
    let (sm, bucket) = with_data("sigint2");
    // No `on-term`: the container ignores SIGTERM, so only SIGKILL ends it.
    let req = probe_request("sigint2-job", &bucket, &["echo", "ready", "sleep", "120"]);
    let (mut child, mut lines) = sm.spawn_train(&req, &["--stop-grace", "60"]);
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l == "algo-1 | ready");
    assert!(ready, "the container never printed ready");
    let pid = child.id().to_string();
    let interrupt = || assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    interrupt();
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    interrupt();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(sent.elapsed() < Duration::from_secs(20), "the 60 s grace was waited out: {:?}", sent.elapsed());
    assert_eq!(sm.describe("sigint2-job")["TrainingJobStatus"], "Stopped");
    assert_eq!(leftovers("sigint2-job"), (String::new(), String::new()));
}

#[test]
fn ctrl_c_during_the_upload_lets_it_finish_and_exits_130() {
    let server = S3Server::start();
    let sm = Smlocal::new();
    // Held mid-upload while Ctrl-C arrives.
    let (mut child, big) = held_mid_upload(&sm, &server, "ctrlc-upload");
    let bucket = server.bucket("ctrlc-upload");
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    server.resume();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run says so");
    let archive = bucket.get("output/ctrlc-upload/output/model.tar.gz").expect("the upload finished");
    assert_eq!(file_entry(&tar_entries(&archive), "seen/big.bin"), big);
    assert!(server.pending_uploads("ctrlc-upload").is_empty());
    assert_ne!(sm.describe("ctrlc-upload")["TrainingJobStatus"], "InProgress");
}
