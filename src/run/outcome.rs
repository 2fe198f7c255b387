//! How an attempt's end becomes the record's: which `FailureReason` a failed host gets (out of
//! memory first, then the algorithm's own words, then its exit code) and the final metrics.

use super::supervise::{Ended, StopCause};
use crate::docker::Exit;
use crate::job::{HostPlan, Job};
use crate::metrics::Recorder;
use crate::resources::human_bytes;
use crate::stage::HostTree;
use crate::state::record::{Failure, FailureKind, MetricData, Record, StopReason};
use crate::tree::TreeError;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

/// `FailureReason` is at most 1024 characters (AWS's limit): `AlgorithmError: ` and the first
/// characters of `/opt/ml/output/failure`.
const FAILURE_REASON_CHARS: usize = 1024;
const REPORTED: &str = "AlgorithmError: ";

/// Ends the record as `ended` says; returns the failure when there was one.
pub(super) async fn finish(record: &mut Record, job: &Job, ended: Ended, work: &Path) -> Option<Failure> {
    match ended {
        Ended::Completed => record.complete(),
        // The run names the feed's reason (it is not the hosts' to tell).
        Ended::InputFailed => {
            let failure = Failure::new(FailureKind::ClientError, "ClientError: a Pipe mode channel could not be read");
            record.fail(&failure);
            return Some(failure);
        }
        Ended::Stopped(StopCause::MaxRuntime) => {
            record.stop(StopReason::MaxRuntime(job.max_runtime.map(|d| d.as_secs()).unwrap_or(0)))
        }
        Ended::Stopped(_) => record.stop(StopReason::Requested),
        Ended::Failed { host, exit } => {
            let plan = job.hosts[host].clone();
            let tree = HostTree::new(work, &plan.name);
            // Reading the failure file is file I/O: off the async workers.
            let read = tokio::task::spawn_blocking(move || host_failure(&tree, exit, &plan)).await;
            let plan = &job.hosts[host];
            let mut failure = read.unwrap_or_else(|e| {
                Failure::new(FailureKind::AlgorithmExit, format!("AlgorithmError: {} failed ({e})", plan.name))
            });
            if job.hosts.len() > 1 && !failure.reason.contains(&plan.name) {
                failure.reason = name_host(&failure.reason, &plan.name);
            }
            record.fail(&failure);
            return Some(failure);
        }
    }
    None
}

/// `reason` with the failed host named after its kind (`AlgorithmError: algo-2: ...`), so it
/// still starts as SageMaker's reasons do; never longer than AWS's 1024 characters.
fn name_host(reason: &str, host: &str) -> String {
    let named = match reason.split_once(": ") {
        Some((kind, rest)) if kind.ends_with("Error") && !kind.contains(' ') => format!("{kind}: {host}: {rest}"),
        _ => format!("{host}: {reason}"),
    };
    named.chars().take(FAILURE_REASON_CHARS).collect()
}

/// Why a host that exited non-zero failed: out of memory first (the failure file of a killed
/// process is whatever it managed to write), then the algorithm's own words, then the code.
fn host_failure(tree: &HostTree, exit: Exit, plan: &HostPlan) -> Failure {
    let host = &plan.name;
    if exit.oom_killed {
        return Failure::new(
            FailureKind::OutOfMemory,
            format!(
                "OutOfMemoryError: the training container on {host} ran out of memory and was killed (exit code {}); its memory limit was {} ({} has {}{}). Use a larger instance type or reduce the algorithm's memory use",
                exit.code,
                human_bytes(plan.limits.memory_bytes),
                plan.instance.instance_type,
                human_bytes(plan.instance.memory_bytes),
                if plan.limits.memory_bytes < plan.instance.memory_bytes {
                    ", scaled down to fit this machine"
                } else {
                    ""
                }
            ),
        );
    }
    let exited =
        format!("AlgorithmError: the training container on {host} exited with a non-zero exit code {}", exit.code);
    let why = match read_failure(tree) {
        // As SageMaker reports an algorithm's own reason (users' code and the SDK test for it).
        Ok(Some(text)) => return Failure::new(FailureKind::AlgorithmReported, format!("{REPORTED}{text}")),
        Ok(None) => "no /opt/ml/output/failure was written".to_string(),
        Err(TreeError::Link { target, .. }) => format!(
            "/opt/ml/output/failure is a symbolic link (to '{}'), which smlocal does not follow",
            target.display()
        ),
        Err(TreeError::NotA { .. }) => {
            "/opt/ml/output/failure is not a regular file (a FIFO, a device or a folder), so it was not read"
                .to_string()
        }
        Err(e) => format!("/opt/ml/output/failure could not be read ({e})"),
    };
    Failure::new(FailureKind::AlgorithmExit, format!("{exited}; {why}. See the job's logs"))
}

/// The failure file's text: a regular file only, opened without following a link (it
/// could name any file of this machine) and without blocking (a FIFO would wait forever),
/// and at most its first few KiB however large it is. None when there is none, or nothing
/// in it.
fn read_failure(tree: &HostTree) -> Result<Option<String>, TreeError> {
    let file = match tree.output().open(Path::new("failure")) {
        Ok(file) => file,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    // Enough for FAILURE_REASON_CHARS characters of any UTF-8.
    let read = file.take(FAILURE_REASON_CHARS as u64 * 4).read_to_end(&mut bytes);
    read.map_err(|source| TreeError::Io { path: tree.output().path().join("failure"), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.chars().take(FAILURE_REASON_CHARS - REPORTED.len()).collect()))
}

/// `FinalMetricDataList`: the last value of every metric.
pub(super) fn final_metrics(recorder: &Mutex<Recorder>) -> Vec<MetricData> {
    let Ok(recorder) = recorder.lock() else {
        return Vec::new();
    };
    recorder
        .final_metrics()
        .into_iter()
        .map(|p| MetricData { metric_name: p.metric, value: p.value, timestamp: p.timestamp })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{InstanceSpec, Limits};

    fn plan() -> HostPlan {
        HostPlan {
            name: "algo-1".into(),
            group: "homogeneousCluster".into(),
            instance: InstanceSpec {
                instance_type: "ml.m5.large".into(),
                vcpu: 2,
                memory_bytes: 8 << 30,
                accelerators: 0,
                derived: false,
            },
            limits: Limits { memory_bytes: 256 << 20, nano_cpus: 2_000_000_000 },
            cpuset: None,
        }
    }

    fn tree(dir: &tempfile::TempDir) -> HostTree {
        HostTree::new(dir.path(), "algo-1")
    }

    #[test]
    fn failure_file_wins_and_is_cut_at_1024_chars() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(&dir);
        std::fs::create_dir_all(tree.output().path()).unwrap();
        std::fs::write(tree.output().path().join("failure"), "x".repeat(2000)).unwrap();
        let failure = host_failure(&tree, Exit { code: 1, oom_killed: false }, &plan());
        assert_eq!((failure.kind, failure.reason.len()), (FailureKind::AlgorithmReported, 1024));
        assert!(failure.reason.starts_with("AlgorithmError: xxx"), "SageMaker's prefix: {}", &failure.reason[..20]);
    }

    #[test]
    fn the_failed_host_is_named_after_the_kind_of_failure() {
        assert_eq!(name_host("AlgorithmError: broken", "algo-2"), "AlgorithmError: algo-2: broken");
        assert_eq!(name_host("it broke: badly", "algo-2"), "algo-2: it broke: badly");
        assert_eq!(name_host(&format!("AlgorithmError: {}", "e".repeat(2000)), "algo-2").chars().count(), 1024);
    }

    #[test]
    fn without_a_failure_file_the_exit_code_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let failure = host_failure(&tree(&dir), Exit { code: 3, oom_killed: false }, &plan());
        assert_eq!(failure.kind, FailureKind::AlgorithmExit);
        assert!(failure.reason.starts_with("AlgorithmError:") && failure.reason.contains("exit code 3"), "{failure:?}");
    }

    #[test]
    fn a_linked_fifo_or_huge_failure_file_is_never_followed_blocked_on_or_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(&dir);
        let output = tree.output().path();
        std::fs::create_dir_all(&output).unwrap();
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, "the host's secret").unwrap();
        std::os::unix::fs::symlink(&secret, output.join("failure")).unwrap();
        let failure = host_failure(&tree, Exit { code: 1, oom_killed: false }, &plan());
        assert_eq!(failure.kind, FailureKind::AlgorithmExit);
        assert!(!failure.reason.contains("the host's secret"), "{failure:?}");
        assert!(failure.reason.contains("is a symbolic link"), "{failure:?}");

        std::fs::remove_file(output.join("failure")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            output.join("failure"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        // Returns at once (a blocking open would hang the test).
        let failure = host_failure(&tree, Exit { code: 1, oom_killed: false }, &plan());
        assert!(failure.reason.contains("not a regular file"), "{failure:?}");

        std::fs::remove_file(output.join("failure")).unwrap();
        std::fs::write(output.join("failure"), "the reason").unwrap();
        // 16 GiB, sparse: only its first KiB are read.
        std::fs::OpenOptions::new().write(true).open(output.join("failure")).unwrap().set_len(1 << 34).unwrap();
        let failure = host_failure(&tree, Exit { code: 1, oom_killed: false }, &plan());
        assert_eq!(failure.kind, FailureKind::AlgorithmReported);
        assert!(failure.reason.starts_with("AlgorithmError: the reason"), "{:?}", &failure.reason[..40]);
        assert!(failure.reason.chars().count() <= 1024);
    }

    #[test]
    fn out_of_memory_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let failure = host_failure(&tree(&dir), Exit { code: 137, oom_killed: true }, &plan());
        assert_eq!(failure.kind, FailureKind::OutOfMemory);
        let reason = failure.reason;
        assert!(
            reason.starts_with("OutOfMemoryError") && reason.contains("256.0 MiB") && reason.contains("scaled down"),
            "{reason}"
        );
    }
}
