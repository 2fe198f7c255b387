//! How an attempt's end becomes the record's: which `FailureReason` a failed host gets (out of
//! memory first, then the algorithm's own words, then its exit code) and the final metrics.

use super::supervise::{Ended, StopCause};
use crate::docker::Exit;
use crate::job::{HostPlan, Job};
use crate::metrics::Recorder;
use crate::resources::human_bytes;
use crate::stage::HostTree;
use crate::state::record::{Failure, FailureKind, MetricData, Record, StopReason};
use std::sync::Mutex;

/// The first 1024 characters of `/opt/ml/output/failure` become `FailureReason`.
const FAILURE_REASON_CHARS: usize = 1024;

/// Ends the record as `ended` says; returns the failure when there was one.
pub(super) fn finish(record: &mut Record, job: &Job, ended: Ended, work: &std::path::Path) -> Option<Failure> {
    match ended {
        Ended::Completed => record.complete(),
        Ended::Stopped(StopCause::MaxRuntime) => {
            record.stop(StopReason::MaxRuntime(job.max_runtime.map(|d| d.as_secs()).unwrap_or(0)))
        }
        Ended::Stopped(_) => record.stop(StopReason::Requested),
        Ended::Failed { host, exit } => {
            let plan = &job.hosts[host];
            let mut failure = host_failure(&HostTree::new(work, &plan.name), exit, plan);
            if job.hosts.len() > 1 && !failure.reason.contains(&plan.name) {
                failure.reason = format!("{}: {}", plan.name, failure.reason);
            }
            record.fail(&failure);
            return Some(failure);
        }
    }
    None
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
    match read_failure(tree) {
        Some(text) => Failure::new(FailureKind::AlgorithmReported, text),
        None => Failure::new(
            FailureKind::AlgorithmExit,
            format!(
                "AlgorithmError: the training container on {host} exited with a non-zero exit code {}; no /opt/ml/output/failure was written. See the job's logs",
                exit.code
            ),
        ),
    }
}

fn read_failure(tree: &HostTree) -> Option<String> {
    let text = std::fs::read(tree.failure_file()).ok()?;
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(FAILURE_REASON_CHARS).collect())
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
        }
    }

    fn tree(dir: &tempfile::TempDir) -> HostTree {
        HostTree::new(dir.path(), "algo-1")
    }

    #[test]
    fn failure_file_wins_and_is_cut_at_1024_chars() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(&dir);
        std::fs::create_dir_all(tree.failure_file().parent().unwrap()).unwrap();
        std::fs::write(tree.failure_file(), "x".repeat(2000)).unwrap();
        let failure = host_failure(&tree, Exit { code: 1, oom_killed: false }, &plan());
        assert_eq!((failure.kind, failure.reason.len()), (FailureKind::AlgorithmReported, 1024));
    }

    #[test]
    fn without_a_failure_file_the_exit_code_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let failure = host_failure(&tree(&dir), Exit { code: 3, oom_killed: false }, &plan());
        assert_eq!(failure.kind, FailureKind::AlgorithmExit);
        assert!(failure.reason.starts_with("AlgorithmError:") && failure.reason.contains("exit code 3"), "{failure:?}");
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
