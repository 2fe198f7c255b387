//! Containers that try to reach this machine's files through what smlocal reads after them:
//! their model, output, checkpoint folders and failure file. Every path is opened without
//! following links; nothing of the host's reaches an archive, S3 or `FailureReason`.

use crate::harness::*;
use serde_json::json;

/// A folder of the host's with a file no container may read.
fn host_secret() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "HOST-SECRET").unwrap();
    std::fs::write(dir.path().join("data/secret.txt"), "HOST-SECRET").unwrap();
    dir
}

fn assert_failed_without_secret(sm: &Smlocal, name: &str, run: &Run, wanted: &str) -> String {
    assert_eq!(run.code, 1, "{run:?}");
    let record = sm.describe(name);
    assert_eq!(record["TrainingJobStatus"], "Failed", "{record:#}");
    let reason = record["FailureReason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains(wanted), "{reason}");
    assert!(!reason.contains("HOST-SECRET") && !run.stdout.contains("HOST-SECRET"), "{run:?}");
    reason
}

#[test]
fn a_model_or_output_folder_replaced_by_a_link_to_the_host_is_refused_and_nothing_is_archived() {
    let (sm, bucket) = with_data("hostile");
    let secret = host_secret();
    let target = secret.path().display().to_string();

    let steps =
        ["write", "/opt/ml/model/ok.txt", "fine", "rmtree", "/opt/ml/model", "symlink", &target, "/opt/ml/model"];
    let run = sm.train(&probe_request("linked-model", &bucket, &steps), &[]);
    let reason = assert_failed_without_secret(
        &sm,
        "linked-model",
        &run,
        "/opt/ml/model on algo-1 is not a folder but a symbolic link",
    );
    assert!(reason.contains(&target), "{reason}");
    assert_eq!(bucket.get("output/linked-model/output/model.tar.gz"), None, "nothing was archived");
    assert_eq!(bucket.get("output/linked-model/output/output.tar.gz"), None);

    // A link one level up: /opt/ml/output, so output/data would resolve into the host.
    let steps = ["rmtree", "/opt/ml/output", "symlink", &target, "/opt/ml/output"];
    let run = sm.train(&probe_request("linked-output", &bucket, &steps), &[]);
    assert_failed_without_secret(
        &sm,
        "linked-output",
        &run,
        "/opt/ml/output on algo-1 is not a folder but a symbolic link",
    );
    assert_eq!(bucket.get("output/linked-output/output/output.tar.gz"), None);
    assert_eq!(leftovers("linked-output"), (String::new(), String::new()));
}

#[test]
fn a_checkpoint_folder_replaced_by_a_link_is_never_synced() {
    let (sm, bucket) = with_data("hostile-ckpt");
    let secret = host_secret();
    let target = secret.path().display().to_string();
    let remote = tempfile::tempdir().unwrap();
    let steps = [
        "write",
        "/opt/ml/checkpoints/mine.txt",
        "mine",
        "sleep",
        "2",
        "rmtree",
        "/opt/ml/checkpoints",
        "symlink",
        &target,
        "/opt/ml/checkpoints",
        "sleep",
        "3",
    ];
    let mut req = probe_request("linked-ckpt", &bucket, &steps);
    req["CheckpointConfig"] = json!({"S3Uri": format!("file://{}/ckpt", remote.path().display())});
    let run = sm.train(&req, &["--checkpoint-interval", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("is a symbolic link"), "the refusal is said: {run:?}");
    let ckpt = remote.path().join("ckpt");
    let synced: Vec<String> = paths_below(&ckpt)
        .iter()
        .filter(|p| !p.is_dir())
        .map(|p| p.strip_prefix(&ckpt).unwrap().display().to_string())
        .collect();
    assert!(synced.iter().all(|f| !f.contains("secret")), "a host file reached S3Uri: {synced:?}");
    for f in &synced {
        let text = std::fs::read_to_string(remote.path().join("ckpt").join(f)).unwrap_or_default();
        assert!(!text.contains("HOST-SECRET"), "{f}");
    }
}

#[test]
fn a_failure_file_that_links_to_the_host_or_is_a_fifo_is_not_read() {
    let (sm, bucket) = with_data("hostile-failure");
    let secret = host_secret();
    let target = format!("{}/secret.txt", secret.path().display());

    let steps = ["symlink", &target, "/opt/ml/output/failure", "exit", "3"];
    let run = sm.train(&probe_request("linked-failure", &bucket, &steps), &[]);
    assert_failed_without_secret(&sm, "linked-failure", &run, "/opt/ml/output/failure is a symbolic link");

    // A FIFO would block whoever opens it for reading until a writer comes: never.
    let steps = ["mkfifo", "/opt/ml/output/failure", "exit", "4"];
    let started = std::time::Instant::now();
    let run = sm.train(&probe_request("fifo-failure", &bucket, &steps), &[]);
    assert_failed_without_secret(&sm, "fifo-failure", &run, "is not a regular file");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the job ended");
    assert_eq!(leftovers("fifo-failure"), (String::new(), String::new()));
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_device_nodes_cannot_be_made() {
    let (sm, bucket) = with_data("hostile-limits");
    // ml.m5.large has 2 vCPU: 4,096 tasks at most, the probe's own thread among them.
    let steps = ["threads", "6000", "may-fail", "mknod", "/opt/ml/model/disk", "echo", "still here"];
    let run = sm.train(&probe_request("limits", &bucket, &steps), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let started: usize = run
        .stdout
        .lines()
        .find_map(|l| l.split("probe: started ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the probe says how many threads started");
    assert!((1000..4096).contains(&started), "the pids limit stopped the threads at {started}");
    assert!(run.stdout.contains("probe: step failed"), "mknod must be refused (CAP_MKNOD dropped): {run:?}");
    assert!(run.stdout.contains("algo-1 | still here"), "{run:?}");
    let model = tar_entries(&bucket.get("output/limits/output/model.tar.gz").unwrap());
    assert!(!model.iter().any(|(p, _)| p.contains("disk")), "{model:?}");
}

#[test]
fn fast_output_long_lines_and_a_last_line_without_newline_are_all_kept() {
    let (sm, bucket) = with_data("spew");
    // 2,000,000 lines are 15.9 MB, more than the engine's json-file logs keep here (10 MB a
    // file): read from the engine's log, lines would be lost while smlocal reads.
    let steps = ["spew", "2000000", "longline", "600000", "print", "the end"];
    let run = sm.train(&probe_request("spew-job", &bucket, &steps), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let log = std::fs::read_to_string(sm.job_dir("spew-job").join("logs/algo-1.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let numbers = &lines[..2_000_000];
    assert!(numbers.iter().enumerate().all(|(i, l)| l.parse::<usize>() == Ok(i + 1)), "a line was lost or garbled");
    // A 600,000-character line is split into CloudWatch-sized events of 256 KiB.
    let long: Vec<usize> = lines[2_000_000..lines.len() - 1].iter().map(|l| l.len()).collect();
    assert_eq!(long, [262_144, 262_144, 75_712], "{long:?}");
    assert_eq!(lines.last(), Some(&"the end"), "the last line, printed without a newline, is kept");
}

#[test]
fn cleanup_goes_on_past_what_it_cannot_remove_and_spares_running_containers_it_cannot_judge() {
    let (sm, bucket) = with_data("cleanup-on");
    let home = sm.home.path().display().to_string();
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker").args(args).output().expect("docker");
        // A busy engine's refusal says why here, not as a container that seems to have died.
        assert!(
            out.status.success() || args[0] == "rm" || args[0] == "network" && args[1] == "rm",
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let tag = unique();
    // A leftover network of this state directory that Docker refuses to remove: a container
    // (not smlocal's) is still attached to it.
    let net = format!("smlocal-ghost-{tag}");
    docker(&["network", "create", "--label", "smlocal.job=ghost", "--label", &format!("smlocal.home={home}"), &net]);
    // Both outlive the test by far (removed at its end): on a busy machine the job below can
    // take minutes, and an exited container of an unseen state directory is anyone's to remove.
    let holder = docker(&["run", "-d", "--network", &net, PROBE_IMAGE, "sleep", "1800"]);
    // A running container of a state directory this process cannot see.
    let foreign = docker(&[
        "run",
        "-d",
        "--label",
        "smlocal.job=theirs",
        "--label",
        "smlocal.home=/not/visible/here",
        PROBE_IMAGE,
        "sleep",
        "1800",
    ]);
    // A job whose runner died.
    assert_eq!(sm.train(&probe_request("orphan-job", &bucket, &["train"]), &[]).code, 0);
    as_if_its_runner_died(&sm, "orphan-job", "999999999");

    let run = Run::from(sm.command().arg("cleanup").output().unwrap());
    let still = |id: &str| docker(&["inspect", "-f", "{{.State.Running}}", id]) == "true";
    let foreign_alive = still(&foreign);
    docker(&["rm", "-f", &holder, &foreign]);
    docker(&["network", "rm", &net]);
    assert_eq!(run.code, 1, "what could not be removed makes cleanup exit 1: {run:?}");
    assert!(run.stderr.contains("could not remove") && run.stderr.contains(&net), "{run:?}");
    assert!(run.stderr.contains("marked 1 orphaned job(s) Failed"), "orphans are still marked: {run:?}");
    assert_eq!(sm.describe("orphan-job")["TrainingJobStatus"], "Failed");
    assert!(foreign_alive, "a running container of an unseen state directory must be left alone: {run:?}");
    assert!(run.stderr.contains("left 1 running container(s) alone"), "{run:?}");
}

#[test]
fn cleanup_removes_the_half_written_upload_a_killed_run_left_in_the_output_folder() {
    let (sm, bucket) = with_data("partial");
    let out = tempfile::tempdir().unwrap();
    let mut req = probe_request("partial-job", &bucket, &["write", "/opt/ml/model/w", "w"]);
    req["OutputDataConfig"]["S3OutputPath"] = json!(format!("file://{}", out.path().display()));
    assert_eq!(sm.train(&req, &[]).code, 0);
    // As a kill -9 in the middle of the upload leaves it: a partial archive, the job InProgress.
    let folder = out.path().join("partial-job/output");
    std::fs::write(folder.join(".output.tar.gz.smlocal-partial"), b"half an archive").unwrap();
    as_if_its_runner_died(&sm, "partial-job", "999999999");
    let run = Run::from(sm.command().arg("cleanup").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!folder.join(".output.tar.gz.smlocal-partial").exists(), "the partial upload was left: {run:?}");
    assert!(folder.join("model.tar.gz").exists(), "what was uploaded whole stays");
}
