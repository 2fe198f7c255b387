//! A tuning job's run: it proposes configurations, launches them as real training jobs
//! through the serve queue (which holds them while their memory does not fit), follows
//! their records and objective metrics, stops jobs early (the median rule, Hyperband),
//! honours the completion criteria and limits, and keeps the tuning record current.

use super::plan::{Plan, WarmStartKind};
use super::record::{ObjectiveStatus, Trial, TuningRecord, TuningStatus};
use super::space::Assignment;
use super::store::TuningStore;
use super::strategy::{self, Observation, Searcher, Verdict};
use crate::metrics::Point;
use crate::serve::queue::Queue;
use crate::state::StateDir;
use crate::state::record::{Record, Status, now};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the tuner looks at its training jobs.
const TICK: Duration = Duration::from_millis(250);
/// Finished training jobs, all failed, after which no more are launched: a definition that
/// cannot train fails the tuning job instead of costing every remaining job.
const FIRST_FAILURES: usize = 3;
/// Convergence (`CompleteOnConvergence`): this many finished jobs in a row that improved
/// the best objective by less than [`CONVERGED_BY`] of its magnitude, after at least
/// [`CONVERGENCE_MIN_JOBS`] jobs.
const CONVERGENCE_WINDOW: usize = 10;
const CONVERGED_BY: f64 = 1e-3;
const CONVERGENCE_MIN_JOBS: usize = 20;

/// Called with the record whenever it changes (the live table of `smlocal tune`).
pub(crate) type Progress = Arc<dyn Fn(&TuningRecord) + Send + Sync>;

struct Run<'a> {
    plan: &'a Plan,
    queue: &'a Queue,
    record: TuningRecord,
    searchers: Vec<Searcher>,
    /// Observations from the parent tuning jobs, per definition.
    prior: Vec<Vec<Observation>>,
    /// Each trial's objective values in order (its curve), by training job name.
    curves: HashMap<String, Vec<f64>>,
    salt: u64,
    launching: bool,
    /// How the run ends once every training job has ended.
    ending: Option<(TuningStatus, Option<String>)>,
}

/// Runs the tuning job until it ends; returns its final record.
pub(crate) async fn run(
    plan: Plan,
    record: TuningRecord,
    queue: Arc<Queue>,
    store: TuningStore,
    shutdown: CancellationToken,
    progress: Option<Progress>,
) -> TuningRecord {
    let _lock = store.claim(&record.name);
    let searchers = plan
        .definitions
        .iter()
        .enumerate()
        .map(|(i, d)| Searcher::new(plan.strategy, &d.space, plan.seed.wrapping_add(i as u64)))
        .collect();
    let prior = warm_start_observations(&plan, &store);
    let salt = strategy::Rng::new(plan.seed ^ (record.creation_time * 1e6) as u64).next_u64();
    let mut run = Run {
        plan: &plan,
        queue: &queue,
        record,
        searchers,
        prior,
        curves: HashMap::new(),
        salt,
        launching: true,
        ending: None,
    };
    let started = Instant::now();
    let mut last_saved = String::new();
    loop {
        run.refresh();
        run.judge_running();
        if run.ending.is_none() && (store.stop_requested(&run.record.name) || shutdown.is_cancelled()) {
            run.stop_all(TuningStatus::Stopped, None);
        }
        if run.ending.is_none()
            && let Some(limit) = plan.max_runtime
            && started.elapsed() >= Duration::from_secs(limit)
        {
            run.record.completion.reason =
                Some(format!("MaxRuntimeInSeconds ({limit}) reached; the running training jobs were stopped"));
            run.stop_all(TuningStatus::Completed, None);
        }
        if run.launching {
            run.check_completion();
        }
        if run.launching {
            run.launch().await;
        }
        let all_ended = run.record.trials.iter().all(Trial::is_terminal);
        let limit_reached = plan.job_limit().is_some_and(|l| run.record.trials.len() >= l as usize);
        if all_ended && (!run.launching || limit_reached) {
            let (status, reason) = run.ending.take().unwrap_or_else(|| run.natural_end());
            run.record.end(status, reason);
        }
        // Saved (and shown) when something other than the time changed.
        let mut probe = run.record.clone();
        probe.last_modified_time = 0.0;
        let text = serde_json::to_string(&probe).unwrap_or_default();
        if text != last_saved {
            run.record.last_modified_time = now();
            if let Err(e) = store.save(&run.record) {
                tracing::warn!("{e}");
            }
            if let Some(p) = &progress {
                p(&run.record);
            }
            last_saved = text;
        }
        if run.record.status.is_terminal() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.cancelled(), if run.ending.is_none() => {}
        }
    }
    tracing::info!("{} ({} training jobs)", run.record.status.as_str(), run.record.trials.len());
    run.record
}

impl Run<'_> {
    fn state(&self) -> &StateDir {
        self.queue.store()
    }

    /// Brings every unfinished trial up to date with its training job's record.
    fn refresh(&mut self) {
        let watch_curves = self.plan.early_stopping || self.plan.rungs.is_some();
        for i in 0..self.record.trials.len() {
            if self.record.trials[i].is_terminal() {
                continue;
            }
            let name = self.record.trials[i].name.clone();
            let Ok(job) = self.state().load(&name) else { continue };
            let definition = self.record.trials[i].definition.clone();
            let Some(objective) = self.record.objective(definition.as_deref()).cloned() else { continue };
            if watch_curves || job.training_job_status.is_terminal() {
                let curve = curve(self.state(), &name, &objective.metric);
                self.curves.insert(name.clone(), curve);
            }
            let trial = &mut self.record.trials[i];
            trial.status = job.training_job_status;
            trial.start_time = job.training_start_time;
            trial.end_time = job.training_end_time;
            if !job.training_job_status.is_terminal() {
                continue;
            }
            let final_value = job
                .final_metric_data_list
                .iter()
                .find(|m| m.metric_name == objective.metric)
                .map(|m| m.value)
                .or_else(|| self.curves.get(&name).and_then(|c| c.last().copied()));
            match (final_value, job.training_job_status) {
                (Some(value), Status::Completed | Status::Stopped) => {
                    trial.objective = Some(value);
                    trial.objective_status = ObjectiveStatus::Succeeded;
                }
                (_, Status::Failed) => {
                    trial.objective_status = ObjectiveStatus::Failed;
                    trial.failure_reason = job.failure_reason.clone();
                }
                _ => {
                    trial.objective_status = ObjectiveStatus::Failed;
                    trial.failure_reason = Some(never_reported(self.queue.store(), &job, &objective.metric));
                }
            }
            if let Some(why) = &trial.stopped_early
                && trial.status == Status::Stopped
                && trial.failure_reason.is_none()
            {
                tracing::info!("{}: {why}", trial.name);
            }
        }
    }

    /// Early stopping and Hyperband: stops running jobs that the rules judge not worth
    /// finishing.
    fn judge_running(&mut self) {
        if !self.plan.early_stopping && self.plan.rungs.is_none() {
            return;
        }
        let loss = |record: &TuningRecord, t: &Trial, c: &[f64]| -> Vec<f64> {
            let o = record.objective(t.definition.as_deref());
            c.iter().map(|&v| o.map_or(v, |o| o.loss(v))).collect()
        };
        let mut stops = Vec::new();
        for t in &self.record.trials {
            if t.status != Status::InProgress || t.stopped_early.is_some() {
                continue;
            }
            let Some(mine) = self.curves.get(&t.name) else { continue };
            let mine = loss(&self.record, t, mine);
            let others: Vec<Vec<f64>> = self
                .record
                .trials
                .iter()
                .filter(|o| o.name != t.name)
                .filter(|o| self.plan.rungs.is_some() || o.status == Status::Completed)
                .filter_map(|o| self.curves.get(&o.name).map(|c| loss(&self.record, o, c)))
                .collect();
            let others: Vec<&[f64]> = others.iter().map(Vec::as_slice).collect();
            let why = if let Some(rungs) = &self.plan.rungs {
                match rungs.judge(&mine, &others) {
                    Verdict::Continue => None,
                    Verdict::Halved { resource, rank, of } => Some(format!(
                        "Stopped by Hyperband at resource {resource}: its objective ranked {rank} of {of} jobs there, outside the best third"
                    )),
                    Verdict::Budget => Some(format!("Stopped by Hyperband: it reached MaxResource ({})", rungs.max)),
                }
            } else {
                strategy::median_rule(&mine, &others).map(|(step, median)| {
                    format!(
                        "Stopped by early stopping at step {step}: its objective was worse than the median {} of the earlier training jobs' running averages",
                        if self.record.objective(t.definition.as_deref()).is_some_and(|o| o.maximize) { -median } else { median }
                    )
                })
            };
            if let Some(why) = why {
                stops.push((t.name.clone(), why));
            }
        }
        for (name, why) in stops {
            if let Err(e) = self.state().request_stop(&name) {
                tracing::warn!("{name}: cannot stop it: {e}");
                continue;
            }
            if let Some(t) = self.record.trials.iter_mut().find(|t| t.name == name) {
                t.stopped_early = Some(why);
            }
        }
    }

    /// Stops launching and stops every running training job; the run ends as `status`.
    fn stop_all(&mut self, status: TuningStatus, reason: Option<String>) {
        self.launching = false;
        if status == TuningStatus::Stopped {
            self.record.status = TuningStatus::Stopping;
        }
        for t in self.record.trials.iter().filter(|t| !t.is_terminal()) {
            if let Err(e) = self.state().request_stop(&t.name) {
                tracing::warn!("{}: cannot stop it: {e}", t.name);
            }
        }
        self.ending = Some((status, reason));
    }

    /// `TuningJobCompletionCriteria` and the first-failures rule.
    fn check_completion(&mut self) {
        let mut finished: Vec<&Trial> = self.record.trials.iter().filter(|t| t.is_terminal()).collect();
        finished.sort_by(|a, b| a.end_time.unwrap_or(0.0).total_cmp(&b.end_time.unwrap_or(0.0)));
        let Some((_, objective)) = self.record.objectives.first().cloned() else { return };
        let criteria = Criteria {
            target: self.plan.target,
            not_improving: self.plan.not_improving,
            convergence: self.plan.convergence,
            job_limit: self.plan.job_limit(),
        };
        match judge_completion(&finished, &objective, &criteria) {
            Ending::Go => {}
            Ending::FirstFailed { count, job, reason } => {
                let reason =
                    format!("The first {count} training jobs failed, so no more were launched: {job}: {reason}");
                self.stop_all(TuningStatus::Failed, Some(reason));
            }
            Ending::Target { target, best } => {
                self.launching = false;
                self.record.completion.reason =
                    Some(format!("the objective reached TargetObjectiveMetricValue {target} (best {best})"));
            }
            Ending::NotImproving(since) => {
                self.launching = false;
                self.record.completion.not_improving = Some(since);
                self.record.completion.reason =
                    Some(format!("{since} training jobs in a row did not improve the best objective"));
            }
            Ending::Converged => {
                self.launching = false;
                self.record.completion.convergence_time = Some(now());
                self.record.completion.reason = Some(format!(
                    "converged: {CONVERGENCE_WINDOW} training jobs in a row improved the best objective by less than {CONVERGED_BY} of it"
                ));
            }
        }
    }

    /// Launches training jobs while there is room under `MaxParallelTrainingJobs` and jobs
    /// left under the limit.
    async fn launch(&mut self) {
        loop {
            let active = self.record.trials.iter().filter(|t| !t.is_terminal()).count();
            let launched = self.record.trials.len();
            if active >= self.plan.max_parallel as usize
                || self.plan.job_limit().is_some_and(|l| launched >= l as usize)
            {
                return;
            }
            let number = launched as u32 + 1;
            // Several definitions take turns (a grid runs each one's combinations in turn).
            let d = self.next_definition(launched);
            let Some(d) = d else {
                self.launching = false;
                return;
            };
            let definition = &self.plan.definitions[d];
            let key = definition.name.clone();
            let tried: Vec<Assignment> =
                self.record.trials.iter().filter(|t| t.definition == key).map(|t| t.tuned.clone()).collect();
            let (observed, pending) = self.observations(d);
            let Some(tuned) = self.searchers[d].propose(&definition.space, &observed, &pending, &tried) else {
                self.launching = false;
                return;
            };
            let name = self.plan.trial_name(number, self.salt);
            let request = self.plan.training_request(definition, &name, &tuned);
            let mut trial = Trial {
                name: name.clone(),
                arn: String::new(),
                definition: key,
                creation_time: now(),
                start_time: None,
                end_time: None,
                status: Status::InProgress,
                tuned,
                objective: None,
                objective_status: ObjectiveStatus::Pending,
                failure_reason: None,
                stopped_early: None,
            };
            match self.queue.create_for(request, Some(&self.record.arn)).await {
                Ok(arn) => trial.arn = arn,
                Err(e) => {
                    // Checked at creation, so rare: an output that appeared meanwhile, say.
                    trial.status = Status::Failed;
                    trial.objective_status = ObjectiveStatus::Failed;
                    trial.failure_reason = Some(format!("{}: {e}", e.aws_kind().as_str()));
                    trial.end_time = Some(now());
                }
            }
            self.record.trials.push(trial);
        }
    }

    /// Which definition the next trial uses; None when every definition's grid is done.
    fn next_definition(&self, launched: usize) -> Option<usize> {
        let n = self.plan.definitions.len();
        if self.plan.strategy != super::strategy::StrategyKind::Grid {
            return (n > 0).then_some(launched % n);
        }
        // A grid: each definition until its combinations are used, then the next.
        let mut used = launched as u64;
        for (i, d) in self.plan.definitions.iter().enumerate() {
            let size = d.space.grid_size().unwrap_or(0);
            if used < size {
                return Some(i);
            }
            used -= size;
        }
        None
    }

    /// What definition `d`'s searcher learns from: finished trials (and the parents'), and
    /// the running ones as points.
    fn observations(&self, d: usize) -> (Vec<Observation>, Vec<Vec<f64>>) {
        let definition = &self.plan.definitions[d];
        let mut observed = self.prior.get(d).cloned().unwrap_or_default();
        let mut pending = Vec::new();
        for t in self.record.trials.iter().filter(|t| t.definition == definition.name) {
            let Some(point) = definition.space.point(&t.tuned) else { continue };
            match (t.objective_status, t.objective) {
                (ObjectiveStatus::Succeeded, Some(v)) => {
                    observed.push(Observation { point, loss: definition.objective.loss(v) })
                }
                (ObjectiveStatus::Pending, _) => pending.push(point),
                _ => {}
            }
        }
        (observed, pending)
    }

    /// Every training job ended and no more are due: Completed, or Failed when none
    /// produced its objective because all of them failed.
    fn natural_end(&self) -> (TuningStatus, Option<String>) {
        let trials = &self.record.trials;
        if !trials.is_empty() && trials.iter().all(|t| t.status == Status::Failed) {
            let first = &trials[0];
            return (
                TuningStatus::Failed,
                Some(format!(
                    "All {} training jobs failed: {}: {}",
                    trials.len(),
                    first.name,
                    first.failure_reason.as_deref().unwrap_or("no reason given")
                )),
            );
        }
        (TuningStatus::Completed, None)
    }
}

/// What ends a search early.
#[derive(Debug, Clone, PartialEq)]
struct Criteria {
    target: Option<f64>,
    not_improving: Option<u32>,
    convergence: bool,
    job_limit: Option<u32>,
}

/// The judgement on the finished training jobs (in the order they ended).
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Go,
    /// The first jobs all failed: the definition cannot train.
    FirstFailed {
        count: usize,
        job: String,
        reason: String,
    },
    Target {
        target: f64,
        best: f64,
    },
    NotImproving(u32),
    Converged,
}

fn judge_completion(finished: &[&Trial], objective: &super::record::Objective, criteria: &Criteria) -> Ending {
    let first = FIRST_FAILURES.min(criteria.job_limit.unwrap_or(u32::MAX) as usize).max(1);
    if finished.len() >= first && finished[..first].iter().all(|t| t.status == Status::Failed) {
        return Ending::FirstFailed {
            count: first,
            job: finished[0].name.clone(),
            reason: finished[0].failure_reason.clone().unwrap_or_else(|| "no reason given".into()),
        };
    }
    // The best so far, how many finished jobs since it last improved, and how many in a row
    // improved it by less than the convergence threshold (or not at all).
    let (mut best, mut since, mut small_steps) = (None::<f64>, 0u32, 0usize);
    for t in finished.iter().filter(|t| t.objective_status == ObjectiveStatus::Succeeded) {
        let Some(v) = t.objective else { continue };
        match best {
            Some(b) if !objective.better(v, b) => {
                since += 1;
                small_steps += 1;
            }
            Some(b) => {
                since = 0;
                small_steps = if (v - b).abs() < CONVERGED_BY * b.abs().max(1e-12) { small_steps + 1 } else { 0 };
                best = Some(v);
            }
            None => best = Some(v),
        }
    }
    if let (Some(target), Some(b)) = (criteria.target, best)
        && !objective.better(target, b)
    {
        return Ending::Target { target, best: b };
    }
    if let Some(limit) = criteria.not_improving
        && since >= limit
    {
        return Ending::NotImproving(since);
    }
    if criteria.convergence && finished.len() >= CONVERGENCE_MIN_JOBS && small_steps >= CONVERGENCE_WINDOW {
        return Ending::Converged;
    }
    Ending::Go
}

/// A training job's objective values, in the order its first host reported them.
fn curve(state: &StateDir, job: &str, metric: &str) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(state.metrics_path(job)) else {
        return Vec::new();
    };
    let points: Vec<Point> =
        text.lines().filter_map(|l| serde_json::from_str::<Point>(l).ok()).filter(|p| p.metric == metric).collect();
    let Some(first_host) = points.iter().map(|p| p.host.clone()).min() else {
        return Vec::new();
    };
    points.into_iter().filter(|p| p.host == first_host).map(|p| p.value).collect()
}

/// Why a training job that ended without failing has no objective: its definition, and
/// the nearest thing in its logs, so a regex that never matched is plain to see.
fn never_reported(state: &StateDir, job: &Record, metric: &str) -> String {
    let regex = job
        .request
        .get("AlgorithmSpecification")
        .and_then(|a| a.get("MetricDefinitions"))
        .and_then(serde_json::Value::as_array)
        .and_then(|defs| defs.iter().find(|d| d["Name"].as_str() == Some(metric)))
        .and_then(|d| d["Regex"].as_str())
        .map(str::to_string);
    let mut out = match &regex {
        Some(re) => format!(
            "The objective metric '{metric}' was never reported: its MetricDefinitions regex '{re}' matched no line of the training job's logs"
        ),
        None => format!("The objective metric '{metric}' was never reported: no MetricDefinitions entry names it"),
    };
    // A line that mentions the metric's name is most likely the one the regex should match.
    let word = metric.rsplit([':', '/', '.']).next().unwrap_or(metric).to_ascii_lowercase();
    let mut hosts: Vec<std::path::PathBuf> = std::fs::read_dir(state.logs_dir(&job.training_job_name))
        .map(|e| e.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    hosts.sort();
    let near = hosts.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find(|l| !word.is_empty() && l.to_ascii_lowercase().contains(&word)).map(str::to_string)
    });
    match near {
        Some(line) => {
            let shown = crate::logs::cloudwatch_form(&line);
            let shown: String = shown.chars().take(200).collect();
            out.push_str(&format!(" (a line that mentions '{word}', as CloudWatch shows it: '{shown}')"));
        }
        None => out.push_str(&format!(" (no line mentions '{word}')")),
    }
    out
}

/// Finished training jobs of the parent tuning jobs, as observations of each definition's
/// searcher: a warm start learns from them. A parent's job whose values are outside this
/// job's ranges is left out (`TransferLearning` may change the ranges).
fn warm_start_observations(plan: &Plan, store: &TuningStore) -> Vec<Vec<Observation>> {
    let mut out = vec![Vec::new(); plan.definitions.len()];
    let Some(warm) = &plan.warm_start else { return out };
    for parent in &warm.parents {
        let Ok(Some(record)) = store.load(parent) else { continue };
        for t in record.trials.iter().filter(|t| t.objective_status == ObjectiveStatus::Succeeded) {
            let Some(v) = t.objective else { continue };
            for (i, d) in plan.definitions.iter().enumerate() {
                if warm.kind == WarmStartKind::IdenticalDataAndAlgorithm && t.definition != d.name {
                    continue;
                }
                if let Some(point) = d.space.point(&t.tuned) {
                    out[i].push(Observation { point, loss: d.objective.loss(v) });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuning::record::Objective;

    fn trial(status: Status, objective: Option<f64>) -> Trial {
        Trial {
            name: format!("t-{status}-{objective:?}"),
            arn: String::new(),
            definition: None,
            creation_time: 0.0,
            start_time: None,
            end_time: None,
            status,
            tuned: Assignment::new(),
            objective,
            objective_status: if objective.is_some() { ObjectiveStatus::Succeeded } else { ObjectiveStatus::Failed },
            failure_reason: (status == Status::Failed).then(|| "ClientError: no data".into()),
            stopped_early: None,
        }
    }

    fn judge(trials: &[Trial], maximize: bool, criteria: Criteria) -> Ending {
        let refs: Vec<&Trial> = trials.iter().collect();
        judge_completion(&refs, &Objective { maximize, metric: "m".into() }, &criteria)
    }

    const NONE: Criteria = Criteria { target: None, not_improving: None, convergence: false, job_limit: Some(10) };

    #[test]
    fn the_first_three_failures_end_the_search_but_a_later_one_does_not() {
        let failed = vec![trial(Status::Failed, None), trial(Status::Failed, None), trial(Status::Failed, None)];
        assert!(matches!(judge(&failed, false, NONE), Ending::FirstFailed { count: 3, .. }));
        assert_eq!(judge(&failed[..2], false, NONE), Ending::Go);
        let mut later = vec![trial(Status::Completed, Some(1.0))];
        later.extend(failed);
        assert_eq!(judge(&later, false, NONE), Ending::Go);
        // A one-job tuning job fails with its job.
        let one = Criteria { job_limit: Some(1), ..NONE };
        assert!(matches!(judge(&later[1..2], false, one), Ending::FirstFailed { count: 1, .. }));
    }

    #[test]
    fn target_not_improving_and_convergence_follow_the_objective_s_direction() {
        let values = [3.0, 2.0, 2.5, 2.2, 2.1];
        let trials: Vec<Trial> = values.iter().map(|&v| trial(Status::Completed, Some(v))).collect();
        assert_eq!(
            judge(&trials, false, Criteria { target: Some(2.0), ..NONE }),
            Ending::Target { target: 2.0, best: 2.0 }
        );
        assert_eq!(judge(&trials, false, Criteria { target: Some(1.5), ..NONE }), Ending::Go);
        // Maximizing, 3.0 is the best and every later job is worse.
        assert_eq!(
            judge(&trials, true, Criteria { target: Some(2.9), ..NONE }),
            Ending::Target { target: 2.9, best: 3.0 }
        );
        assert_eq!(judge(&trials, false, Criteria { not_improving: Some(3), ..NONE }), Ending::NotImproving(3));
        assert_eq!(judge(&trials, true, Criteria { not_improving: Some(4), ..NONE }), Ending::NotImproving(4));
        assert_eq!(judge(&trials, false, Criteria { not_improving: Some(4), ..NONE }), Ending::Go);
        let flat: Vec<Trial> = (0..25).map(|i| trial(Status::Completed, Some(1.0 - 1e-6 * f64::from(i)))).collect();
        let converging = Criteria { convergence: true, job_limit: None, ..NONE };
        assert_eq!(judge(&flat, false, converging.clone()), Ending::Converged);
        assert_eq!(judge(&flat[..15], false, converging), Ending::Go, "fewer than twenty jobs");
    }
}
