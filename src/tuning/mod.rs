//! Hyperparameter tuning jobs, as SageMaker runs them, on this machine:
//! `CreateHyperParameterTuningJob` launches real training jobs (through the serve queue)
//! with the values a strategy proposes, ranks them by their objective metric, and ends by
//! its limits and completion criteria.
//!
//! # Layout
//! - `space.rs`: the parameter ranges, their scales, the unit cube the strategies search;
//! - `strategy.rs`: Random, Grid, Bayesian (a Gaussian process), Hyperband's rungs and the
//!   median early-stopping rule;
//! - `plan.rs`: the request read and checked, and each trial's training job request;
//! - `record.rs`, `store.rs`: the tuning job's record and where it is kept;
//! - `run.rs`: the loop that launches, follows and stops training jobs.

pub(crate) mod plan;
pub(crate) mod record;
pub(crate) mod run;
pub(crate) mod space;
pub(crate) mod store;
pub(crate) mod strategy;

use crate::spec::{self, AwsErrorKind};
use crate::state::listing::{ListError, ListQuery};
use plan::{Plan, WarmStartKind};
use record::{Objective, TuningRecord, TuningStatus};
use serde_json::{Value, json};
use std::sync::Arc;
use store::TuningStore;

pub(crate) use crate::hosting::store::HostingStoreError as TuningStoreError;

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_shows_four_significant_digits_of_continuous_values() {
        assert_eq!(super::short("0.04017084773942995"), "0.04017");
        assert_eq!(super::short("0.0089363897246466"), "0.008936");
        assert_eq!(super::short("12.3456"), "12.35");
        assert_eq!(super::short("7"), "7");
        assert_eq!(super::short("momentum"), "momentum");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("{}", spec::validation_sentence(.0))]
    Invalid(Vec<String>),
    #[error(
        "Hyperparameter tuning job names must be unique within an AWS account and region, and a hyperparameter tuning job with this name already exists ({0})"
    )]
    InUse(String),
    #[error("Amazon SageMaker can't find a tuning job named {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] TuningStoreError),
    #[error(transparent)]
    List(#[from] ListError),
}

impl TuningError {
    pub fn aws_kind(&self) -> AwsErrorKind {
        match self {
            TuningError::Spec(e) => e.aws_kind(),
            TuningError::Invalid(_) | TuningError::List(_) => AwsErrorKind::Validation,
            TuningError::InUse(_) => AwsErrorKind::ResourceInUse,
            TuningError::NotFound(_) => AwsErrorKind::ResourceNotFound,
            TuningError::Store(_) => AwsErrorKind::Internal,
        }
    }
}

/// How a tuning job run by [`Tuning::tune_here`] ended.
#[derive(Debug, Clone)]
pub struct TuneOutcome {
    pub name: String,
    pub status: String,
    pub failure_reason: Option<String>,
    /// The completion criterion that ended it early, in words.
    pub completion: Option<String>,
    /// The best training job and its objective value.
    pub best: Option<(String, f64)>,
    pub jobs: usize,
}

/// The tuning jobs of one state directory, run with one queue's training jobs.
pub struct Tuning {
    queue: Arc<crate::serve::queue::Queue>,
    store: TuningStore,
}

/// Parent tuning jobs a warm start may name, and the training jobs they may hold in all.
const MAX_PARENTS: usize = 5;
const MAX_PARENT_TRAINING_JOBS: usize = 500;

impl Tuning {
    pub fn new(queue: Arc<crate::serve::queue::Queue>) -> Self {
        let store = TuningStore::new(queue.store().root());
        Tuning { queue, store }
    }

    /// Checks a CreateHyperParameterTuningJob request, records it, and returns the plan
    /// and the first record; nothing runs yet.
    pub(crate) fn admit(&self, body: &Value) -> Result<(Plan, TuningRecord), TuningError> {
        spec::check("CreateHyperParameterTuningJobRequest", body)?;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let plan = Plan::of(body, seed).map_err(TuningError::Invalid)?;
        let mut errors = Vec::new();
        // Each definition as the training jobs will be asked for: the same checks as
        // CreateTrainingJob, before anything runs.
        for d in &plan.definitions {
            let at = d
                .name
                .as_deref()
                .map_or("TrainingJobDefinition".to_string(), |n| format!("TrainingJobDefinitions[{n}]"));
            let middle = d.space.assignment(&vec![0.5; d.space.dimensions()]);
            let request = plan.training_request(d, &plan.trial_name(1, 0), &middle);
            let checked = spec::from_value(request)
                .map_err(|e| e.to_string())
                .and_then(|r| crate::job::plan(r, self.queue.settings()).map(drop).map_err(|e| e.to_string()));
            if let Err(e) = checked {
                errors.push(format!("{at}: {e}"));
            }
        }
        let parents_best = self.check_warm_start(&plan, body, &mut errors);
        if !errors.is_empty() {
            return Err(TuningError::Invalid(errors));
        }
        let region = &self.queue.settings().region;
        let account = plan
            .definitions
            .first()
            .and_then(|d| d.template.get("RoleArn"))
            .and_then(Value::as_str)
            .and_then(|arn| arn.split(':').nth(4))
            .filter(|a| !a.is_empty())
            .unwrap_or(crate::hosting::control::DEFAULT_ACCOUNT)
            .to_string();
        let arn = format!(
            "arn:aws:sagemaker:{region}:{account}:hyper-parameter-tuning-job/{}",
            plan.name.to_ascii_lowercase()
        );
        let mut kept = body.as_object().cloned().unwrap_or_default();
        kept.remove("Tags");
        let objectives: Vec<(String, Objective)> =
            plan.definitions.iter().map(|d| (d.name.clone().unwrap_or_default(), d.objective.clone())).collect();
        let mut record = TuningRecord::new(&plan.name, &arn, kept, objectives);
        record.parents_best = parents_best;
        if !self.store.create(&record)? {
            return Err(TuningError::InUse(arn));
        }
        Ok((plan, record))
    }

    /// The warm start's parents: they exist, have ended, fit the limits, and (for
    /// `IdenticalDataAndAlgorithm`) ran the same image on the same data. Returns their best
    /// training job.
    fn check_warm_start(&self, plan: &Plan, body: &Value, errors: &mut Vec<String>) -> Option<Value> {
        let warm = plan.warm_start.as_ref()?;
        if warm.parents.len() > MAX_PARENTS {
            errors.push(format!(
                "WarmStartConfig.ParentHyperParameterTuningJobs: {} parents; at most {MAX_PARENTS}",
                warm.parents.len()
            ));
        }
        let mut best: Option<(f64, Value)> = None;
        let mut jobs = 0;
        for parent in &warm.parents {
            let record = match self.store.load(parent) {
                Ok(Some(r)) => r,
                _ => {
                    errors
                        .push(format!("WarmStartConfig: the parent hyperparameter tuning job {parent} does not exist"));
                    continue;
                }
            };
            if !record.status.is_terminal() {
                errors.push(format!(
                    "WarmStartConfig: the parent hyperparameter tuning job {parent} is {}; a parent must have ended",
                    record.status.as_str()
                ));
            }
            jobs += record.trials.len();
            if warm.kind == WarmStartKind::IdenticalDataAndAlgorithm {
                let definition = |v: &Value| {
                    let d = v
                        .get("TrainingJobDefinition")
                        .cloned()
                        .or_else(|| v.get("TrainingJobDefinitions").and_then(|d| d.get(0)).cloned());
                    d.map(|d| (d["AlgorithmSpecification"]["TrainingImage"].clone(), d["InputDataConfig"].clone()))
                };
                if definition(&Value::Object(record.request.clone())) != definition(body) {
                    errors.push(format!(
                        "WarmStartConfig: IdenticalDataAndAlgorithm needs the same TrainingImage and InputDataConfig as the parent {parent}; use TransferLearning to change them"
                    ));
                }
            }
            if let Some(b) = record.best() {
                let summary = record.summary_of(b);
                let objective = record.objective(b.definition.as_deref()).cloned();
                if let (Some(v), Some(o)) = (b.objective, objective)
                    && best.as_ref().is_none_or(|(bv, _)| o.better(v, *bv))
                {
                    best = Some((v, summary));
                }
            }
        }
        if jobs > MAX_PARENT_TRAINING_JOBS {
            errors.push(format!(
                "WarmStartConfig: the parents ran {jobs} training jobs; at most {MAX_PARENT_TRAINING_JOBS} can be used"
            ));
        }
        best.map(|(_, s)| s)
    }

    /// CreateHyperParameterTuningJob: admits the request and runs it in the background.
    pub(crate) fn create(self: &Arc<Self>, body: Value) -> Result<Value, TuningError> {
        let (plan, record) = self.admit(&body)?;
        let arn = record.arn.clone();
        let me = self.clone();
        let span = tracing::info_span!("tuning", name = %record.name);
        self.queue.spawn(tracing::Instrument::instrument(
            async move {
                let shutdown = me.queue.shutdown_token();
                run::run(plan, record, me.queue.clone(), me.store.clone(), shutdown, None).await;
            },
            span,
        ));
        Ok(json!({ "HyperParameterTuningJobArn": arn }))
    }

    /// Runs an admitted tuning job in this process until it ends.
    async fn run_here(
        &self,
        plan: Plan,
        record: TuningRecord,
        stop: tokio_util::sync::CancellationToken,
        progress: run::Progress,
    ) -> TuningRecord {
        run::run(plan, record, self.queue.clone(), self.store.clone(), stop, Some(progress)).await
    }

    /// `smlocal tune`: admits the request and runs it here until it ends (or `stop`);
    /// `on_change` gets the table of its training jobs whenever it changes.
    pub async fn tune_here(
        &self,
        body: &Value,
        stop: tokio_util::sync::CancellationToken,
        on_change: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<TuneOutcome, TuningError> {
        let (plan, record) = self.admit(body)?;
        tracing::info!("tuning job {} created ({} strategy)", record.name, plan.strategy.as_str());
        let progress: run::Progress = Arc::new(move |r: &TuningRecord| on_change(&table(r)));
        let record = self.run_here(plan, record, stop, progress).await;
        let best = record.best().and_then(|b| Some((b.name.clone(), b.objective?)));
        Ok(TuneOutcome {
            name: record.name.clone(),
            status: record.status.as_str().to_string(),
            failure_reason: record.failure_reason.clone(),
            completion: record.completion.reason.clone(),
            best,
            jobs: record.trials.len(),
        })
    }

    /// The record, settled when its runner died without ending it (the process that ran it
    /// was killed): it is `Failed`, saying so, and its training jobs are asked to stop.
    fn load(&self, name: &str) -> Result<TuningRecord, TuningError> {
        let Some(mut record) = self.store.load(name)? else {
            return Err(TuningError::NotFound(name.to_string()));
        };
        if !record.status.is_terminal() && !self.store.is_running(name) {
            for t in record.trials.iter().filter(|t| !t.is_terminal()) {
                let _ = self.queue.store().request_stop(&t.name);
            }
            record.end(
                TuningStatus::Failed,
                Some("The smlocal process running this tuning job ended before it did; its running training jobs were stopped".into()),
            );
            self.store.save(&record)?;
        }
        Ok(record)
    }

    pub(crate) fn describe(&self, body: &Value) -> Result<Value, TuningError> {
        spec::check("DescribeHyperParameterTuningJobRequest", body)?;
        Ok(self.load(body["HyperParameterTuningJobName"].as_str().unwrap_or_default())?.description())
    }

    pub(crate) fn stop(&self, body: &Value) -> Result<Value, TuningError> {
        spec::check("StopHyperParameterTuningJobRequest", body)?;
        let name = body["HyperParameterTuningJobName"].as_str().unwrap_or_default();
        let record = self.load(name)?;
        if record.status.is_terminal() {
            return Err(TuningError::Invalid(vec![format!(
                "The hyperparameter tuning job {name} is {} and cannot be stopped",
                record.status.as_str()
            )]));
        }
        self.store.request_stop(name)?;
        Ok(json!({}))
    }

    pub(crate) fn list(&self, body: Value) -> Result<Value, TuningError> {
        spec::check("ListHyperParameterTuningJobsRequest", &body)?;
        let query: ListQuery = serde_json::from_value(body).map_err(|e| TuningError::Invalid(vec![e.to_string()]))?;
        let page = self.store.page(&query)?;
        let mut out = json!({ "HyperParameterTuningJobSummaries": page.summaries });
        if let Some(token) = page.next_token {
            out["NextToken"] = json!(token);
        }
        Ok(out)
    }

    /// ListTrainingJobsForHyperParameterTuningJob: the tuning job's training jobs, filtered
    /// by status and sorted as asked (by objective, jobs without one come last), in pages.
    pub(crate) fn list_training_jobs(&self, body: &Value) -> Result<Value, TuningError> {
        spec::check("ListTrainingJobsForHyperParameterTuningJobRequest", body)?;
        let record = self.load(body["HyperParameterTuningJobName"].as_str().unwrap_or_default())?;
        let text = |k: &str| body.get(k).and_then(Value::as_str);
        let mut trials: Vec<&record::Trial> =
            record.trials.iter().filter(|t| text("StatusEquals").is_none_or(|s| t.status.as_str() == s)).collect();
        let sort_by = text("SortBy").unwrap_or("CreationTime");
        let descending = text("SortOrder").unwrap_or("Descending") == "Descending";
        match sort_by {
            "Name" => trials.sort_by(|a, b| a.name.cmp(&b.name)),
            "Status" => trials.sort_by(|a, b| a.status.as_str().cmp(b.status.as_str()).then(a.name.cmp(&b.name))),
            "FinalObjectiveMetricValue" => {
                // Descending is best first for a Maximize objective; either way, jobs with
                // no objective come after every job with one.
                trials.sort_by(|a, b| match (a.objective, b.objective) {
                    (Some(x), Some(y)) => {
                        let order = x.total_cmp(&y);
                        if descending { order.reverse() } else { order }
                    }
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => a.name.cmp(&b.name),
                });
            }
            _ => trials.sort_by(|a, b| a.creation_time.total_cmp(&b.creation_time).then(a.name.cmp(&b.name))),
        }
        if sort_by != "FinalObjectiveMetricValue" && descending {
            trials.reverse();
        }
        let start = match text("NextToken") {
            None => 0,
            Some(token) => token
                .strip_prefix("after:")
                .and_then(|n| trials.iter().position(|t| t.name == n))
                .map(|i| i + 1)
                .ok_or_else(|| TuningError::List(ListError::Token(token.to_string())))?,
        };
        let max = body.get("MaxResults").and_then(Value::as_u64).unwrap_or(10).max(1) as usize;
        let page: Vec<Value> = trials.iter().skip(start).take(max).map(|t| record.summary_of(t)).collect();
        let mut out = json!({ "TrainingJobSummaries": page });
        if start + max < trials.len() {
            out["NextToken"] = json!(format!("after:{}", trials[start + max - 1].name));
        }
        Ok(out)
    }
}

/// A continuous value to four significant digits, for the table (the job has them all).
fn short(value: &str) -> String {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x != 0.0 && (value.contains('.') || value.contains('e')) => {
            let magnitude = x.abs().log10().floor() as i32;
            format!("{x:.*}", (3 - magnitude).max(0) as usize)
        }
        _ => value.to_string(),
    }
}

/// The parts of a record the command line prints.
pub(crate) fn table(record: &TuningRecord) -> String {
    let mut out = format!("{:<48} {:<11} {:>14}  {}\n", "TRAINING JOB", "STATUS", "OBJECTIVE", "HYPERPARAMETERS");
    let best = record.best().map(|b| b.name.clone());
    for t in &record.trials {
        let objective = t.objective.map_or_else(
            || if t.objective_status == record::ObjectiveStatus::Failed { "-".to_string() } else { "…".to_string() },
            |v| format!("{v:.6}"),
        );
        let tuned: Vec<String> = t.tuned.iter().map(|(k, v)| format!("{k}={}", short(v))).collect();
        let mark = if best.as_deref() == Some(t.name.as_str()) { "*" } else { " " };
        out.push_str(&format!(
            "{mark}{:<47} {:<11} {:>14}  {}\n",
            t.name,
            t.status.as_str(),
            objective,
            tuned.join(" ")
        ));
    }
    out
}
