//! A tuning job's record: the request as it came, its status, and one entry per training
//! job it launched, from which DescribeHyperParameterTuningJob's counters and best job and
//! ListTrainingJobsForHyperParameterTuningJob's summaries are computed (never stored twice).

use super::space::Assignment;
use crate::state::record::now;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// `HyperParameterTuningJobStatus` has the training job's five values (smlocal deletes
/// nothing, so never `Deleting`), and a trial's `TrainingJobStatus` is its job's.
pub(crate) use crate::state::record::Status as TuningStatus;
use crate::state::record::Status;

/// `ObjectiveStatus`: whether the training job's objective metric was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ObjectiveStatus {
    Pending,
    Succeeded,
    Failed,
}

/// `HyperParameterTuningJobObjective`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Objective {
    pub(crate) maximize: bool,
    pub(crate) metric: String,
}

impl Objective {
    /// A value to minimise, whichever way the objective points.
    pub(crate) fn loss(&self, value: f64) -> f64 {
        if self.maximize { -value } else { value }
    }

    pub(crate) fn kind(&self) -> &'static str {
        if self.maximize { "Maximize" } else { "Minimize" }
    }

    /// Whether `a` is better than `b`.
    pub(crate) fn better(&self, a: f64, b: f64) -> bool {
        self.loss(a) < self.loss(b)
    }
}

/// One training job the tuning job launched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Trial {
    pub(crate) name: String,
    pub(crate) arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) definition: Option<String>,
    pub(crate) creation_time: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) start_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) end_time: Option<f64>,
    /// `TrainingJobStatus` as the training job's record says.
    pub(crate) status: Status,
    pub(crate) tuned: Assignment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) objective: Option<f64>,
    pub(crate) objective_status: ObjectiveStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure_reason: Option<String>,
    /// Why the tuning job stopped it early (early stopping or Hyperband), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stopped_early: Option<String>,
}

impl Trial {
    pub(crate) fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// `HyperParameterTrainingJobSummary`.
    pub(crate) fn summary(&self, tuning_job: &str, objective: Option<&Objective>) -> Value {
        let mut out = json!({
            "TrainingJobName": self.name,
            "TrainingJobArn": self.arn,
            "TuningJobName": tuning_job,
            "CreationTime": self.creation_time,
            "TrainingJobStatus": self.status,
            "TunedHyperParameters": self.tuned,
            "ObjectiveStatus": match self.objective_status {
                ObjectiveStatus::Pending => "Pending",
                ObjectiveStatus::Succeeded => "Succeeded",
                ObjectiveStatus::Failed => "Failed",
            },
        });
        if let Some(d) = &self.definition {
            out["TrainingJobDefinitionName"] = json!(d);
        }
        if let Some(t) = self.start_time {
            out["TrainingStartTime"] = json!(t);
        }
        if let Some(t) = self.end_time {
            out["TrainingEndTime"] = json!(t);
        }
        if let Some(reason) = &self.failure_reason {
            out["FailureReason"] = json!(reason);
        }
        if let (Some(value), Some(objective)) = (self.objective, objective) {
            out["FinalHyperParameterTuningJobObjectiveMetric"] =
                json!({"Type": objective.kind(), "MetricName": objective.metric, "Value": value});
        }
        out
    }
}

/// `TuningJobCompletionDetails` and why the tuning job ended early, when it did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Completion {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) not_improving: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) convergence_time: Option<f64>,
    /// The criterion that ended it, in words (shown by `smlocal tune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TuningRecord {
    pub(crate) name: String,
    pub(crate) arn: String,
    pub(crate) status: TuningStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure_reason: Option<String>,
    pub(crate) creation_time: f64,
    pub(crate) last_modified_time: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) end_time: Option<f64>,
    /// The request as it came (Describe echoes it), without its tags.
    pub(crate) request: Map<String, Value>,
    /// Each definition's objective, by definition name ("" for `TrainingJobDefinition`).
    pub(crate) objectives: Vec<(String, Objective)>,
    pub(crate) trials: Vec<Trial>,
    #[serde(default)]
    pub(crate) completion: Completion,
    /// The best training job of the parent tuning jobs (warm start), for
    /// `OverallBestTrainingJob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parents_best: Option<Value>,
}

impl TuningRecord {
    pub(crate) fn new(
        name: &str,
        arn: &str,
        request: Map<String, Value>,
        objectives: Vec<(String, Objective)>,
    ) -> Self {
        let t = now();
        TuningRecord {
            name: name.into(),
            arn: arn.into(),
            status: TuningStatus::InProgress,
            failure_reason: None,
            creation_time: t,
            last_modified_time: t,
            end_time: None,
            request,
            objectives,
            trials: Vec::new(),
            completion: Completion::default(),
            parents_best: None,
        }
    }

    pub(crate) fn objective(&self, definition: Option<&str>) -> Option<&Objective> {
        let key = definition.unwrap_or_default();
        self.objectives
            .iter()
            .find(|(d, _)| d == key)
            .map(|(_, o)| o)
            .or_else(|| self.objectives.first().map(|(_, o)| o))
    }

    pub(crate) fn end(&mut self, status: TuningStatus, reason: Option<String>) {
        self.status = status;
        self.failure_reason = reason;
        self.end_time = Some(now());
        self.last_modified_time = now();
    }

    /// The trial with the best objective value, if any has one.
    pub(crate) fn best(&self) -> Option<&Trial> {
        self.trials.iter().filter(|t| t.objective_status == ObjectiveStatus::Succeeded).fold(None, |best, t| {
            let (Some(value), Some(objective)) = (t.objective, self.objective(t.definition.as_deref())) else {
                return best;
            };
            match best {
                Some(b) if b.objective.is_some_and(|bv| !objective.better(value, bv)) => Some(b),
                _ => Some(t),
            }
        })
    }

    pub(crate) fn summary_of(&self, trial: &Trial) -> Value {
        trial.summary(&self.name, self.objective(trial.definition.as_deref()))
    }

    fn status_counters(&self) -> Value {
        let count = |statuses: &[Status]| self.trials.iter().filter(|t| statuses.contains(&t.status)).count();
        json!({
            "Completed": count(&[Status::Completed]),
            "InProgress": count(&[Status::InProgress, Status::Stopping]),
            // smlocal retries nothing on the tuning job's behalf: every failure is final.
            "RetryableError": 0,
            "NonRetryableError": count(&[Status::Failed]),
            "Stopped": count(&[Status::Stopped]),
        })
    }

    fn objective_counters(&self) -> Value {
        let count = |s: ObjectiveStatus| self.trials.iter().filter(|t| t.objective_status == s).count();
        json!({
            "Succeeded": count(ObjectiveStatus::Succeeded),
            "Pending": count(ObjectiveStatus::Pending),
            "Failed": count(ObjectiveStatus::Failed),
        })
    }

    /// DescribeHyperParameterTuningJob's answer.
    pub(crate) fn description(&self) -> Value {
        let mut out = self.request.clone();
        out.insert("HyperParameterTuningJobArn".into(), json!(self.arn));
        out.insert("HyperParameterTuningJobStatus".into(), json!(self.status.as_str()));
        out.insert("CreationTime".into(), json!(self.creation_time));
        out.insert("LastModifiedTime".into(), json!(self.last_modified_time));
        if let Some(t) = self.end_time {
            out.insert("HyperParameterTuningEndTime".into(), json!(t));
        }
        out.insert("TrainingJobStatusCounters".into(), self.status_counters());
        out.insert("ObjectiveStatusCounters".into(), self.objective_counters());
        let best = self.best().map(|t| self.summary_of(t));
        if let Some(best) = &best {
            out.insert("BestTrainingJob".into(), best.clone());
        }
        if out.contains_key("WarmStartConfig") {
            let overall = match (&best, &self.parents_best) {
                (Some(mine), Some(theirs)) => {
                    let value = |v: &Value| v["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64();
                    let better = match (value(mine), value(theirs), self.objectives.first()) {
                        (Some(a), Some(b), Some((_, o))) => !o.better(b, a),
                        _ => true,
                    };
                    Some(if better { mine.clone() } else { theirs.clone() })
                }
                (Some(mine), None) => Some(mine.clone()),
                (None, theirs) => theirs.clone(),
            };
            if let Some(overall) = overall {
                out.insert("OverallBestTrainingJob".into(), overall);
            }
        }
        if let Some(reason) = &self.failure_reason {
            out.insert("FailureReason".into(), json!(reason));
        }
        let mut details = Map::new();
        if let Some(n) = self.completion.not_improving {
            details.insert("NumberOfTrainingJobsObjectiveNotImproving".into(), json!(n));
        }
        if let Some(t) = self.completion.convergence_time {
            details.insert("ConvergenceDetectedTime".into(), json!(t));
        }
        if !details.is_empty() {
            out.insert("TuningJobCompletionDetails".into(), Value::Object(details));
        }
        let end = self.end_time.unwrap_or_else(now);
        out.insert("ConsumedResources".into(), json!({"RuntimeInSeconds": (end - self.creation_time).max(0.0) as i64}));
        Value::Object(out)
    }

    /// `HyperParameterTuningJobSummary`, as ListHyperParameterTuningJobs returns it.
    pub(crate) fn list_summary(&self) -> Value {
        let config = self.request.get("HyperParameterTuningJobConfig");
        let mut out = json!({
            "HyperParameterTuningJobName": self.name,
            "HyperParameterTuningJobArn": self.arn,
            "HyperParameterTuningJobStatus": self.status.as_str(),
            "Strategy": config.and_then(|c| c.get("Strategy")).cloned().unwrap_or(json!("Bayesian")),
            "CreationTime": self.creation_time,
            "LastModifiedTime": self.last_modified_time,
            "TrainingJobStatusCounters": self.status_counters(),
            "ObjectiveStatusCounters": self.objective_counters(),
        });
        if let Some(t) = self.end_time {
            out["HyperParameterTuningEndTime"] = json!(t);
        }
        if let Some(limits) = config.and_then(|c| c.get("ResourceLimits")) {
            out["ResourceLimits"] = limits.clone();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(name: &str, status: Status, objective: Option<f64>) -> Trial {
        Trial {
            name: name.into(),
            arn: format!("arn:{name}"),
            definition: None,
            creation_time: 1.0,
            start_time: None,
            end_time: None,
            status,
            tuned: Assignment::new(),
            objective,
            objective_status: match (status, objective) {
                (_, Some(_)) => ObjectiveStatus::Succeeded,
                (Status::InProgress, None) => ObjectiveStatus::Pending,
                _ => ObjectiveStatus::Failed,
            },
            failure_reason: None,
            stopped_early: None,
        }
    }

    #[test]
    fn counters_add_up_and_the_best_follows_the_objective_s_direction() {
        for (maximize, best) in [(false, "b"), (true, "c")] {
            let mut r = TuningRecord::new(
                "t",
                "arn:t",
                Map::new(),
                vec![(String::new(), Objective { maximize, metric: "m".into() })],
            );
            r.trials = vec![
                trial("a", Status::Failed, None),
                trial("b", Status::Completed, Some(0.1)),
                trial("c", Status::Stopped, Some(0.9)),
                trial("d", Status::InProgress, None),
                trial("e", Status::Completed, None),
            ];
            let d = r.description();
            assert_eq!(
                d["TrainingJobStatusCounters"],
                json!({"Completed": 2, "InProgress": 1, "RetryableError": 0, "NonRetryableError": 1, "Stopped": 1})
            );
            assert_eq!(d["ObjectiveStatusCounters"], json!({"Succeeded": 2, "Pending": 1, "Failed": 2}));
            assert_eq!(d["BestTrainingJob"]["TrainingJobName"], best);
            assert_eq!(
                d["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Type"],
                if maximize { "Maximize" } else { "Minimize" }
            );
            assert!(d.get("OverallBestTrainingJob").is_none(), "only with a warm start");
        }
    }
}
