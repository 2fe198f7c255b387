//! The verdicts: pure functions from what a check's run left ([`Baseline`], a [`JobOutcome`])
//! to a [`CheckResult`] with its evidence and the fix. They read the outcome's typed failure,
//! never its message.

use super::lab::{Baseline, LabError, completed};
use super::{Check, CheckResult, Verdict, shorten};
use crate::docker::{Change, ImageInfo};
use crate::pipe::PipeReport;
use crate::resources::human_bytes;
use crate::run::JobOutcome;
use crate::state::record::{FailureKind, Secondary, Status};
use std::time::Duration;

/// A baseline shorter than this leaves no middle to send SIGTERM in.
pub(super) const MIN_TRAINING_FOR_SIGTERM: f64 = 0.5;

/// Paths a training container may write; everything else is lost on SageMaker or a sign of
/// an image that is not self-contained.
const ALLOWED: &[&str] = &["/opt/ml/model", "/opt/ml/output", "/opt/ml/checkpoints", "/tmp"];

/// A run that did not happen: the evidence, and what to do about it.
fn not_run(check: Check, e: &LabError) -> CheckResult {
    let fix = match e {
        LabError::Request(_) | LabError::Plan(_) => "make the request valid",
        LabError::Run(_) => "see the error",
    };
    CheckResult::new(check, Verdict::Fail, e.to_string(), fix)
}

/// `FailureReason`, or the status when there is none.
fn reason_or_status(o: &JobOutcome) -> String {
    o.record.failure_reason.clone().unwrap_or_else(|| o.record.training_job_status.to_string())
}

pub(super) fn train(b: &Baseline) -> CheckResult {
    let (verdict, evidence, fix) = match &b.outcome {
        Ok(o) if completed(o) => (Verdict::Pass, format!("exit 0 in {:.2} s", b.seconds), String::new()),
        Ok(o) => (
            Verdict::Fail,
            format!(
                "{}: {} ({})",
                o.record.training_job_status,
                o.record.failure_reason.clone().unwrap_or_default(),
                b.log_tail
            ),
            "SageMaker runs `docker run IMAGE train`: the entrypoint must accept `train` and exit 0 after training"
                .into(),
        ),
        Err(e) => (Verdict::Fail, e.to_string(), "see the error".into()),
    };
    CheckResult { seconds: b.seconds, ..CheckResult::new(Check::Train, verdict, evidence, fix) }
}

pub(super) fn model(b: &Baseline) -> CheckResult {
    let (verdict, evidence, fix) = match b.model_files.len() {
        0 => (Verdict::Fail, "model.tar.gz is empty".to_string(), "save the trained model under /opt/ml/model"),
        n => (Verdict::Pass, format!("{n} file(s), e.g. {}", b.model_files[0]), ""),
    };
    CheckResult::new(Check::Model, verdict, evidence, fix)
}

pub(super) fn filesystem(b: &Baseline) -> CheckResult {
    let outside = outside_allowed(&b.changes);
    let (verdict, evidence, fix) = if outside.is_empty() {
        (Verdict::Pass, "no writes outside /opt/ml/model, /opt/ml/output, /opt/ml/checkpoints, /tmp".to_string(), "")
    } else {
        (
            Verdict::Fail,
            format!("wrote {}", outside.iter().take(5).cloned().collect::<Vec<_>>().join(", ")),
            "write results to /opt/ml/model or /opt/ml/output/data and scratch files to /tmp",
        )
    };
    CheckResult::new(Check::Filesystem, verdict, evidence, fix)
}

/// The changed paths outside [`ALLOWED`], each as `A /path` (added), `C` or `D`. A changed
/// directory only counts when nothing inside it is listed (its own change is then the news).
pub(crate) fn outside_allowed(changes: &[Change]) -> Vec<String> {
    let allowed =
        |p: &str| ALLOWED.iter().any(|a| p == *a || p.starts_with(&format!("{a}/")) || a.starts_with(&format!("{p}/")));
    changes
        .iter()
        .filter(|c| !allowed(&c.path))
        .filter(|c| c.kind != 'C' || !changes.iter().any(|o| o.path.starts_with(&format!("{}/", c.path))))
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect()
}

pub(super) fn memory(b: &Baseline) -> CheckResult {
    let oom = b
        .outcome
        .as_ref()
        .ok()
        .and_then(|o| o.failure.as_ref())
        .filter(|f| f.kind == FailureKind::OutOfMemory)
        .map(|f| f.reason.clone());
    let cap = b.memory_cap;
    let (verdict, evidence, fix) = match (oom, b.peak_memory) {
        (Some(reason), _) => (Verdict::Fail, reason, "use less memory or a larger instance type"),
        (None, None) => (
            Verdict::Warn,
            format!("finished in {:.2} s, too quickly to sample its memory (cap {})", b.seconds, human_bytes(cap)),
            "give --request data or hyperparameters that run for a second or more",
        ),
        (None, Some(peak)) => {
            let share = peak as f64 / cap.max(1) as f64;
            let evidence = format!("peak {} of {} ({:.0}%)", human_bytes(peak), human_bytes(cap), share * 100.0);
            if share > 0.9 {
                (
                    Verdict::Fail,
                    evidence,
                    "on a real instance system processes take part of this memory: use less or a larger instance type",
                )
            } else if share > 0.75 {
                (Verdict::Warn, evidence, "little headroom: a larger input may run out of memory")
            } else {
                (Verdict::Pass, evidence, "")
            }
        }
    };
    CheckResult::new(Check::Memory, verdict, evidence, fix)
}

pub(super) fn sigterm_too_short(baseline_training: f64) -> CheckResult {
    CheckResult::new(
        Check::Sigterm,
        Verdict::Warn,
        format!("training took {baseline_training:.2} s, too short to send SIGTERM in the middle of it"),
        "give --request hyperparameters or data that train for a few seconds to test SIGTERM handling",
    )
}

pub(super) fn sigterm(outcome: &Result<JobOutcome, LabError>, grace: Duration) -> CheckResult {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return not_run(Check::Sigterm, e),
    };
    let result = |verdict, evidence: String, fix: &str| CheckResult::new(Check::Sigterm, verdict, evidence, fix);
    match outcome.record.span_of(Secondary::Stopping) {
        None => result(
            Verdict::Warn,
            format!("the run ended in {:.2} s, before SIGTERM was sent", outcome.elapsed.as_secs_f64()),
            "give --request hyperparameters that train for a few seconds to test SIGTERM handling",
        ),
        Some((start, end)) => {
            let took = end.unwrap_or(start) - start;
            if outcome.sigkilled.is_empty() {
                result(Verdict::Pass, format!("exited {took:.2} s after SIGTERM (grace {} s)", grace.as_secs()), "")
            } else {
                result(
                    Verdict::Fail,
                    format!("still running {} s after SIGTERM; it was SIGKILLed", grace.as_secs()),
                    "handle SIGTERM: save what you can and exit (and run the process as PID 1 with an exec-form ENTRYPOINT). Images whose entry point is SageMaker's training toolkit are SIGKILLed on SageMaker too: the toolkit does not forward SIGTERM to the user's script",
                )
            }
        }
    }
}

/// `how` says what made the run invalid.
pub(super) fn failure(outcome: &Result<JobOutcome, LabError>, how: &str) -> CheckResult {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return not_run(Check::Failure, e),
    };
    let result = |verdict, evidence: String, fix: &str| CheckResult::new(Check::Failure, verdict, evidence, fix);
    let reason = outcome.record.failure_reason.clone().unwrap_or_default();
    match (outcome.record.training_job_status, outcome.failure.as_ref().map(|f| f.kind)) {
        (Status::Completed, _) => result(
            Verdict::Fail,
            format!("run {how} exited 0"),
            "check inputs and hyperparameters; on bad input write the reason to /opt/ml/output/failure and exit non-zero",
        ),
        (Status::Failed, Some(FailureKind::AlgorithmExit)) => result(
            Verdict::Fail,
            format!("run {how} failed but wrote no /opt/ml/output/failure ({reason})"),
            "write a one-line reason to /opt/ml/output/failure before exiting non-zero: it becomes FailureReason",
        ),
        (Status::Failed, _) => result(Verdict::Pass, format!("run {how} failed with: {}", shorten(&reason, 100)), ""),
        (other, _) => result(Verdict::Warn, format!("run {how} ended {other}"), ""),
    }
}

pub(super) fn isolation(outcome: &Result<JobOutcome, LabError>, log_tail: &str) -> CheckResult {
    let (verdict, evidence, fix) = match outcome {
        Ok(o) if completed(o) => {
            (Verdict::Pass, "completed with EnableNetworkIsolation (a network with no way out)".to_string(), "")
        }
        Ok(o) => (
            Verdict::Fail,
            format!("fails without network: {} ({log_tail})", o.record.failure_reason.clone().unwrap_or_default()),
            "bake dependencies and weights into the image or the input channels; fetch nothing at run time",
        ),
        Err(e) => (Verdict::Fail, e.to_string(), "see the error"),
    };
    CheckResult::new(Check::Isolation, verdict, evidence, fix)
}

pub(super) fn two_hosts(outcome: &Result<JobOutcome, LabError>, log_tail: &str) -> CheckResult {
    let (verdict, evidence, fix) = match outcome {
        Ok(o) if completed(o) => {
            (Verdict::Pass, format!("algo-1 and algo-2 both finished in {:.1} s", o.elapsed.as_secs_f64()), "")
        }
        Ok(o) => (
            Verdict::Fail,
            format!("as 2 hosts (host names ip-10-0-1-11, ip-10-0-1-12): {} ({log_tail})", reason_or_status(o)),
            "take current_host and hosts from /opt/ml/input/config/resourceconfig.json, not from /etc/hostname or socket.gethostname()",
        ),
        Err(e) => (Verdict::Fail, e.to_string(), "see the error"),
    };
    CheckResult::new(Check::TwoHosts, verdict, evidence, fix)
}

/// Pipe mode, judged from the plain run's feeds: the algorithm must open `<channel>_0` (and
/// read it, or close it when it has what it needs), and a second epoch opens `_1`. An
/// algorithm that never opens a FIFO is seen here whatever it waited for: the run ended
/// (by its exit or MaxRuntimeInSeconds), never the check waiting on it.
pub(super) fn pipe(b: &Baseline) -> CheckResult {
    let Ok(outcome) = &b.outcome else {
        return CheckResult::new(Check::Pipe, Verdict::Fail, "the plain run did not happen", "see the 'train' check");
    };
    let first_host: Vec<&PipeReport> =
        outcome.pipes.iter().filter(|p| outcome.pipes.first().is_some_and(|f| f.host == p.host)).collect();
    let never: Vec<String> =
        first_host.iter().filter(|p| p.epochs.is_empty()).map(|p| format!("{}_0", p.channel)).collect();
    if !never.is_empty() {
        return CheckResult::new(
            Check::Pipe,
            Verdict::Fail,
            format!(
                "never opened /opt/ml/input/data/{} ({})",
                never.join(", /opt/ml/input/data/"),
                reason_or_status(outcome)
            ),
            "in Pipe mode a channel is the FIFO /opt/ml/input/data/<channel>_<epoch>, not a folder: open <channel>_0 and read it to its end, then <channel>_1 for the next epoch",
        );
    }
    let epochs: Vec<String> = first_host
        .iter()
        .map(|p| {
            let whole = p.epochs.iter().filter(|e| e.whole).count();
            format!("{}: {} epoch(s) opened, {whole} read to the end", p.channel, p.epochs.len())
        })
        .collect();
    if first_host.iter().all(|p| p.epochs.len() >= 2) {
        CheckResult::new(Check::Pipe, Verdict::Pass, epochs.join("; "), "")
    } else {
        CheckResult::new(
            Check::Pipe,
            Verdict::Warn,
            format!("{}: no second epoch", epochs.join("; ")),
            "fine for a single pass; an algorithm that trains several epochs must open <channel>_1, <channel>_2, ... in turn (each appears as the one before is opened)",
        )
    }
}

pub(super) fn pid1(image: &ImageInfo, request_entrypoint: Option<Vec<String>>) -> CheckResult {
    let entrypoint = request_entrypoint.unwrap_or_else(|| image.entrypoint.clone());
    let shell = entrypoint.len() >= 2
        && entrypoint[0].rsplit('/').next().is_some_and(|b| b == "sh" || b == "bash")
        && entrypoint[1] == "-c";
    let size = human_bytes(image.size_bytes);
    let shown = if entrypoint.is_empty() {
        format!("(none; CMD {:?} is replaced by train)", image.cmd)
    } else {
        format!("{entrypoint:?}")
    };
    let (verdict, evidence, fix) = if shell {
        (
            Verdict::Warn,
            format!("shell-form ENTRYPOINT {shown}: PID 1 is the shell, which does not pass SIGTERM on; image {size}"),
            "use exec form: ENTRYPOINT [\"/usr/local/bin/train\"] (or `exec` in a wrapper script)",
        )
    } else {
        (Verdict::Pass, format!("ENTRYPOINT {shown}; image {size}"), "")
    };
    CheckResult::new(Check::Pid1, verdict, evidence, fix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::record::{Failure, Record};

    fn change(kind: char, path: &str) -> Change {
        Change { kind, path: path.into() }
    }

    #[test]
    fn only_writes_outside_the_allowed_folders_count() {
        let changes = [
            change('C', "/opt"),
            change('C', "/opt/ml"),
            change('A', "/opt/ml/model/x"),
            change('C', "/tmp"),
            change('A', "/tmp/scratch"),
            change('C', "/var"),
            change('A', "/var/lib"),
            change('A', "/var/lib/state"),
            change('C', "/etc/passwd"),
        ];
        assert_eq!(outside_allowed(&changes), ["A /var/lib", "A /var/lib/state", "C /etc/passwd"]);
    }

    #[test]
    fn shell_form_entrypoints_are_warned() {
        let info = ImageInfo {
            labels: Default::default(),
            entrypoint: vec!["/bin/sh".into(), "-c".into(), "python train.py".into()],
            cmd: vec![],
            size_bytes: 1 << 20,
        };
        assert_eq!(pid1(&info, None).verdict, Verdict::Warn);
        let exec = ImageInfo { entrypoint: vec!["/usr/bin/train".into()], ..info };
        let r = pid1(&exec, None);
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(r.evidence.contains("1.0 MiB"));
    }

    fn failed(kind: FailureKind, reason: &str) -> Result<JobOutcome, LabError> {
        let mut record = Record::new("check-failure", "arn", "file:///m", &serde_json::Map::new());
        let failure = Failure::new(kind, reason);
        record.fail(&failure);
        Ok(JobOutcome {
            record,
            failure: Some(failure),
            interrupted: false,
            elapsed: Duration::from_secs(1),
            uploaded: true,
            kept_artifacts: None,
            sigkilled: Vec::new(),
            pipes: Vec::new(),
        })
    }

    #[test]
    fn the_failure_check_judges_by_kind_not_by_wording() {
        // The algorithm's own words pass, whatever they say (even words smlocal uses).
        let own = failed(FailureKind::AlgorithmReported, "AlgorithmError: the training container on algo-1 said no");
        assert_eq!(failure(&own, "with no input channels").verdict, Verdict::Pass);
        // A bare non-zero exit fails, however it is worded.
        let bare = failed(FailureKind::AlgorithmExit, "exit code 1");
        let r = failure(&bare, "with no input channels");
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.evidence.contains("wrote no /opt/ml/output/failure"), "{}", r.evidence);
    }
}
