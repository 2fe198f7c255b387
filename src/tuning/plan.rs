//! A `CreateHyperParameterTuningJob` request read into what the tuner acts on: the
//! strategy and its limits, each training job definition's space, objective and template,
//! and the training job request each trial becomes. The checks the service makes beyond
//! botocore's model are here, in its words where it has words.

use super::record::Objective;
use super::space::{Assignment, Space};
use super::strategy::{Rungs, StrategyKind};
use serde_json::{Map, Value, json};

/// One training job definition (`TrainingJobDefinition`, or one of `TrainingJobDefinitions`).
#[derive(Debug, Clone)]
pub(crate) struct Definition {
    /// `DefinitionName` (None for `TrainingJobDefinition`).
    pub(crate) name: Option<String>,
    pub(crate) objective: Objective,
    pub(crate) space: Space,
    /// The ranges as the request wrote them.
    pub(crate) raw_ranges: Value,
    pub(crate) statics: Map<String, Value>,
    /// The training job request every trial starts from: the definition's fields, as
    /// CreateTrainingJob names them.
    pub(crate) template: Map<String, Value>,
}

/// `WarmStartType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WarmStartKind {
    IdenticalDataAndAlgorithm,
    TransferLearning,
}

#[derive(Debug, Clone)]
pub(crate) struct WarmStart {
    pub(crate) kind: WarmStartKind,
    pub(crate) parents: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) strategy: StrategyKind,
    pub(crate) rungs: Option<Rungs>,
    /// None: until a completion criterion or `MaxRuntimeInSeconds` ends it.
    pub(crate) max_jobs: Option<u32>,
    pub(crate) max_parallel: u32,
    pub(crate) max_runtime: Option<u64>,
    pub(crate) early_stopping: bool,
    pub(crate) target: Option<f64>,
    pub(crate) not_improving: Option<u32>,
    pub(crate) convergence: bool,
    pub(crate) seed: u64,
    pub(crate) definitions: Vec<Definition>,
    pub(crate) warm_start: Option<WarmStart>,
}

/// Where Hyperband looks for `MaxResource` when the request does not give it, as the
/// service documents.
const EPOCH_KEYS: [&str; 5] = ["epochs", "numepochs", "n-epochs", "n_epochs", "num_epochs"];
/// Hyperband's largest `MaxResource`.
const MAX_RESOURCE_LIMIT: u64 = 20_000;
/// The training job fields a definition carries over as they are.
const CARRIED: [&str; 12] = [
    "RoleArn",
    "InputDataConfig",
    "VpcConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "RetryStrategy",
    "Environment",
];

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl Plan {
    /// Reads a request already checked against botocore's model; every problem found is
    /// returned, each naming its field.
    pub(crate) fn of(body: &Value, seed_now: u64) -> Result<Plan, Vec<String>> {
        let mut errors = Vec::new();
        let name = text(body, "HyperParameterTuningJobName").to_string();
        let config = &body["HyperParameterTuningJobConfig"];
        let strategy = StrategyKind::parse(text(config, "Strategy")).unwrap_or(StrategyKind::Bayesian);
        let early_stopping = text(config, "TrainingJobEarlyStoppingType") == "Auto";
        let limits = &config["ResourceLimits"];
        let max_jobs = limits.get("MaxNumberOfTrainingJobs").and_then(Value::as_u64).map(|n| n as u32);
        let max_parallel = limits.get("MaxParallelTrainingJobs").and_then(Value::as_u64).unwrap_or(1).max(1) as u32;
        let max_runtime = limits.get("MaxRuntimeInSeconds").and_then(Value::as_u64);
        let criteria = &config["TuningJobCompletionCriteria"];
        let target = criteria.get("TargetObjectiveMetricValue").and_then(Value::as_f64);
        let not_improving = criteria
            .get("BestObjectiveNotImproving")
            .and_then(|b| b.get("MaxNumberOfTrainingJobsNotImproving"))
            .and_then(Value::as_u64)
            .map(|n| n as u32);
        let convergence =
            criteria.get("ConvergenceDetected").and_then(|c| c.get("CompleteOnConvergence")).and_then(Value::as_str)
                == Some("Enabled");
        let seed = config.get("RandomSeed").and_then(Value::as_u64).unwrap_or(seed_now);

        let mut definitions = Vec::new();
        match (body.get("TrainingJobDefinition"), body.get("TrainingJobDefinitions").and_then(Value::as_array)) {
            (Some(_), Some(_)) => {
                errors.push("Specify either TrainingJobDefinition or TrainingJobDefinitions, not both".to_string())
            }
            (None, None) => errors.push("Specify TrainingJobDefinition or TrainingJobDefinitions".to_string()),
            (Some(one), None) => {
                let objective = objective_of(
                    config.get("HyperParameterTuningJobObjective"),
                    "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective",
                    &mut errors,
                );
                let space =
                    Space::parse(config.get("ParameterRanges"), "HyperParameterTuningJobConfig.ParameterRanges")
                        .unwrap_or_else(|e| {
                            errors.extend(e);
                            Space::default()
                        });
                if let Some(objective) = objective {
                    let raw = config.get("ParameterRanges").cloned().unwrap_or_default();
                    definitions.push(definition(
                        one,
                        None,
                        objective,
                        (space, raw),
                        "TrainingJobDefinition",
                        &mut errors,
                    ));
                }
            }
            (None, Some(many)) => {
                for key in ["ParameterRanges", "HyperParameterTuningJobObjective"] {
                    if config.get(key).is_some() {
                        errors.push(format!(
                            "HyperParameterTuningJobConfig.{key}: with TrainingJobDefinitions, each definition gives its own ({})",
                            if key == "ParameterRanges" { "HyperParameterRanges" } else { "TuningObjective" }
                        ));
                    }
                }
                let mut names = std::collections::BTreeSet::new();
                for (i, d) in many.iter().enumerate() {
                    let at = format!("TrainingJobDefinitions.{}", i + 1);
                    let Some(def_name) = d.get("DefinitionName").and_then(Value::as_str) else {
                        errors.push(format!("{at}.DefinitionName: each of several definitions needs a name"));
                        continue;
                    };
                    if !names.insert(def_name.to_string()) {
                        errors.push(format!("{at}.DefinitionName: '{def_name}' names another definition too"));
                    }
                    let objective =
                        objective_of(d.get("TuningObjective"), &format!("{at}.TuningObjective"), &mut errors);
                    let space = Space::parse(d.get("HyperParameterRanges"), &format!("{at}.HyperParameterRanges"))
                        .unwrap_or_else(|e| {
                            errors.extend(e);
                            Space::default()
                        });
                    if let Some(objective) = objective {
                        let raw = d.get("HyperParameterRanges").cloned().unwrap_or_default();
                        definitions.push(definition(
                            d,
                            Some(def_name.to_string()),
                            objective,
                            (space, raw),
                            &at,
                            &mut errors,
                        ));
                    }
                }
                let kinds: std::collections::BTreeSet<bool> =
                    definitions.iter().map(|d| d.objective.maximize).collect();
                if kinds.len() > 1 {
                    errors.push("TrainingJobDefinitions: every TuningObjective must have the same Type (all Maximize or all Minimize), so their jobs can be ranked together".into());
                }
            }
        }

        match strategy {
            StrategyKind::Grid => {
                // Judged from the request's ranges as written (a range with another error
                // is still a continuous range).
                for d in &definitions {
                    let count = |key: &str| d.raw_ranges.get(key).and_then(Value::as_array).map_or(0, Vec::len);
                    if count("ContinuousParameterRanges") > 0 {
                        errors.push(format!(
                            "{}: the Grid strategy searches only IntegerParameterRanges and CategoricalParameterRanges; ContinuousParameterRanges cannot be used with it",
                            where_ranges(d)
                        ));
                    } else if count("IntegerParameterRanges") + count("CategoricalParameterRanges") == 0 {
                        errors.push(format!("{}: the Grid strategy needs at least one IntegerParameterRanges or CategoricalParameterRanges", where_ranges(d)));
                    }
                }
            }
            _ => {
                if max_jobs.is_none()
                    && max_runtime.is_none()
                    && target.is_none()
                    && not_improving.is_none()
                    && !convergence
                {
                    errors.push("HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs: required unless MaxRuntimeInSeconds or a TuningJobCompletionCriteria ends the tuning job".into());
                }
            }
        }
        if let (Some(max), StrategyKind::Grid) = (max_jobs, strategy) {
            let total: u64 = definitions.iter().filter_map(|d| d.space.grid_size()).sum();
            if u64::from(max) > total && total > 0 {
                tracing::debug!(
                    "the grid has {total} combinations; MaxNumberOfTrainingJobs {max} is more than it needs"
                );
            }
        }
        if let Some(max) = max_jobs
            && max_parallel > max
        {
            errors.push(format!(
                "HyperParameterTuningJobConfig.ResourceLimits: MaxParallelTrainingJobs ({max_parallel}) cannot be greater than MaxNumberOfTrainingJobs ({max})"
            ));
        }

        let hyperband = config.get("StrategyConfig").and_then(|s| s.get("HyperbandStrategyConfig"));
        let rungs = if strategy == StrategyKind::Hyperband {
            if early_stopping {
                errors.push("HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType: must be Off with the Hyperband strategy, which stops jobs early itself".into());
            }
            let min = hyperband.and_then(|h| h.get("MinResource")).and_then(Value::as_u64).unwrap_or(1);
            let max = hyperband.and_then(|h| h.get("MaxResource")).and_then(Value::as_u64).or_else(|| {
                definitions.first().and_then(|d| {
                    EPOCH_KEYS
                        .iter()
                        .find_map(|k| d.statics.get(*k).and_then(Value::as_str).and_then(|v| v.trim().parse().ok()))
                })
            });
            match max {
                None => {
                    errors.push(format!(
                        "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig.MaxResource: not given and not found in StaticHyperParameters ({}); give it",
                        EPOCH_KEYS.join(", ")
                    ));
                    None
                }
                Some(max) if max > MAX_RESOURCE_LIMIT || max < min.max(1) => {
                    errors.push(format!(
                        "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig: MaxResource {max} must be between MinResource {min} and {MAX_RESOURCE_LIMIT}"
                    ));
                    None
                }
                Some(max) => Some(Rungs { min: min.max(1), max }),
            }
        } else {
            if hyperband.is_some() {
                errors.push(format!(
                    "HyperParameterTuningJobConfig.StrategyConfig: HyperbandStrategyConfig is for the Hyperband strategy, not {}",
                    strategy.as_str()
                ));
            }
            None
        };

        if body.get("Autotune").is_some() {
            errors.push("Autotune: choosing the strategy and ranges for you is not available on this machine; give HyperParameterTuningJobConfig in full".into());
        }
        let warm_start = body.get("WarmStartConfig").map(|w| WarmStart {
            kind: if text(w, "WarmStartType") == "TransferLearning" {
                WarmStartKind::TransferLearning
            } else {
                WarmStartKind::IdenticalDataAndAlgorithm
            },
            parents: w
                .get("ParentHyperParameterTuningJobs")
                .and_then(Value::as_array)
                .map(|p| p.iter().map(|j| text(j, "HyperParameterTuningJobName").to_string()).collect())
                .unwrap_or_default(),
        });

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Plan {
            name,
            strategy,
            rungs,
            max_jobs,
            max_parallel,
            max_runtime,
            early_stopping,
            target,
            not_improving,
            convergence,
            seed,
            definitions,
            warm_start,
        })
    }

    /// How many training jobs the tuning job may launch at most (a grid's size caps it).
    pub(crate) fn job_limit(&self) -> Option<u32> {
        if self.strategy == StrategyKind::Grid {
            let total: u64 = self.definitions.iter().filter_map(|d| d.space.grid_size()).sum();
            let total = u32::try_from(total).unwrap_or(u32::MAX);
            return Some(self.max_jobs.map_or(total, |m| m.min(total)));
        }
        self.max_jobs
    }

    /// The training job name of trial `number` (from 1), as AWS names them:
    /// `<tuning job>-<NNN>-<8 hex digits>`.
    pub(crate) fn trial_name(&self, number: u32, salt: u64) -> String {
        format!("{}-{number:03}-{:08x}", self.name, (salt ^ u64::from(number).wrapping_mul(0x9E37_79B9)) as u32)
    }

    /// The CreateTrainingJob request of a trial of definition `d` with `tuned` values.
    pub(crate) fn training_request(&self, d: &Definition, name: &str, tuned: &Assignment) -> Value {
        let mut request = d.template.clone();
        request.insert("TrainingJobName".into(), json!(name));
        let mut hyperparameters = d.statics.clone();
        for (k, v) in tuned {
            hyperparameters.insert(k.clone(), json!(v));
        }
        if !hyperparameters.is_empty() {
            request.insert("HyperParameters".into(), Value::Object(hyperparameters));
        }
        Value::Object(request)
    }
}

fn where_ranges(d: &Definition) -> String {
    match &d.name {
        Some(n) => format!("TrainingJobDefinitions[{n}].HyperParameterRanges"),
        None => "HyperParameterTuningJobConfig.ParameterRanges".into(),
    }
}

fn objective_of(value: Option<&Value>, at: &str, errors: &mut Vec<String>) -> Option<Objective> {
    let Some(v) = value else {
        errors.push(format!("{at}: required: the tuning job ranks its training jobs by this metric"));
        return None;
    };
    Some(Objective { maximize: text(v, "Type") == "Maximize", metric: text(v, "MetricName").to_string() })
}

/// A definition's training job template and checks: the image, the objective among the
/// metrics, tuned and static hyperparameters apart.
fn definition(
    d: &Value,
    name: Option<String>,
    objective: Objective,
    (space, raw_ranges): (Space, Value),
    at: &str,
    errors: &mut Vec<String>,
) -> Definition {
    let mut template = Map::new();
    for key in CARRIED {
        if let Some(v) = d.get(key) {
            template.insert(key.into(), v.clone());
        }
    }
    // HyperParameterTuningResourceConfig stands in for ResourceConfig (its first instance
    // configuration when it lists several).
    if let Some(rc) = d.get("HyperParameterTuningResourceConfig") {
        let first = rc.get("InstanceConfigs").and_then(Value::as_array).and_then(|c| c.first());
        let pick = |key: &str| first.and_then(|f| f.get(key)).or_else(|| rc.get(key)).cloned();
        let mut resource = Map::new();
        for key in ["InstanceType", "InstanceCount", "VolumeSizeInGB", "VolumeKmsKeyId"] {
            if let Some(v) = pick(key) {
                resource.insert(key.into(), v);
            }
        }
        if template.contains_key("ResourceConfig") {
            errors.push(format!("{at}: give ResourceConfig or HyperParameterTuningResourceConfig, not both"));
        }
        template.insert("ResourceConfig".into(), Value::Object(resource));
    }
    let spec = &d["AlgorithmSpecification"];
    let mut algorithm = Map::new();
    for key in ["TrainingImage", "TrainingInputMode", "MetricDefinitions"] {
        if let Some(v) = spec.get(key) {
            algorithm.insert(key.into(), v.clone());
        }
    }
    if spec.get("AlgorithmName").is_some() {
        errors.push(format!(
            "{at}.AlgorithmSpecification.AlgorithmName: algorithm resources (AWS Marketplace) are not on this machine; name the image in TrainingImage"
        ));
    }
    template.insert("AlgorithmSpecification".into(), Value::Object(algorithm));

    let image = text(spec, "TrainingImage");
    let listed: Vec<String> = spec
        .get("MetricDefinitions")
        .and_then(Value::as_array)
        .map(|m| m.iter().map(|d| text(d, "Name").to_string()).collect())
        .unwrap_or_default();
    let builtin: Vec<String> = crate::images::builtin_metric_definitions(image)
        .map(|defs| defs.into_iter().map(|d| d.name).collect())
        .unwrap_or_default();
    let reported = listed.contains(&objective.metric) || (listed.is_empty() && builtin.contains(&objective.metric));
    if !reported {
        let offered = if listed.is_empty() { &builtin } else { &listed };
        errors.push(if offered.is_empty() {
            format!(
                "{at}.AlgorithmSpecification.MetricDefinitions: the objective metric '{}' has no metric definition; add one with Name '{}' and the Regex that finds its value in the logs",
                objective.metric, objective.metric
            )
        } else {
            format!(
                "{at}: the objective metric '{}' is not one of the metrics the training jobs report ({})",
                objective.metric,
                offered.join(", ")
            )
        });
    }
    let statics = d.get("StaticHyperParameters").and_then(Value::as_object).cloned().unwrap_or_default();
    for p in space.names() {
        if statics.contains_key(p) {
            errors.push(format!(
                "{at}.StaticHyperParameters: '{p}' is tuned; a hyperparameter is either static or in a range, not both"
            ));
        }
    }
    Definition { name, objective, space, raw_ranges, statics, template }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Value {
        json!({
            "HyperParameterTuningJobName": "tune-1",
            "HyperParameterTuningJobConfig": {
                "Strategy": "Random",
                "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "loss"},
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2},
                "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.01", "MaxValue": "0.5"}]}
            },
            "TrainingJobDefinition": {
                "AlgorithmSpecification": {"TrainingImage": "smlocal/probe:latest", "TrainingInputMode": "File",
                    "MetricDefinitions": [{"Name": "loss", "Regex": "loss=([0-9.]+)"}]},
                "StaticHyperParameters": {"epochs": "5"},
                "RoleArn": "arn:aws:iam::123456789012:role/R",
                "OutputDataConfig": {"S3OutputPath": "s3://b/out"},
                "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
                "StoppingCondition": {"MaxRuntimeInSeconds": 60}
            }
        })
    }

    #[test]
    fn a_trial_is_the_definition_with_its_tuned_and_static_hyperparameters() {
        let plan = Plan::of(&request(), 1).expect("valid");
        assert_eq!(plan.job_limit(), Some(4));
        let name = plan.trial_name(1, 42);
        assert!(name.starts_with("tune-1-001-") && name.len() == "tune-1-001-".len() + 8, "{name}");
        let tuned: Assignment = [("lr".to_string(), "0.1".to_string())].into();
        let r = plan.training_request(&plan.definitions[0], &name, &tuned);
        assert_eq!(r["TrainingJobName"], json!(name));
        assert_eq!(r["HyperParameters"], json!({"epochs": "5", "lr": "0.1"}));
        assert_eq!(r["AlgorithmSpecification"]["TrainingImage"], "smlocal/probe:latest");
        assert_eq!(r["ResourceConfig"]["InstanceType"], "ml.m5.large");
    }

    #[test]
    fn the_service_s_rules_are_checked_and_each_names_its_field() {
        let mut r = request();
        r["HyperParameterTuningJobConfig"]["Strategy"] = json!("Grid");
        r["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] = json!("accuracy");
        r["TrainingJobDefinition"]["StaticHyperParameters"]["lr"] = json!("0.2");
        r["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"] = json!(9);
        r["Autotune"] = json!({"Mode": "Enabled"});
        let errors = Plan::of(&r, 1).unwrap_err().join("\n");
        for words in [
            "ContinuousParameterRanges cannot be used with it",
            "the objective metric 'accuracy' is not one of the metrics the training jobs report (loss)",
            "StaticHyperParameters: 'lr' is tuned",
            "MaxParallelTrainingJobs (9) cannot be greater than MaxNumberOfTrainingJobs (4)",
            "Autotune: choosing the strategy and ranges for you is not available on this machine",
        ] {
            assert!(errors.contains(words), "{words}:\n{errors}");
        }
    }

    #[test]
    fn hyperband_finds_its_budget_in_the_epochs_and_refuses_early_stopping() {
        let mut r = request();
        r["HyperParameterTuningJobConfig"]["Strategy"] = json!("Hyperband");
        let plan = Plan::of(&r, 1).unwrap();
        assert_eq!(plan.rungs, Some(Rungs { min: 1, max: 5 }));
        r["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = json!("Auto");
        r["TrainingJobDefinition"]["StaticHyperParameters"] = json!({});
        let errors = Plan::of(&r, 1).unwrap_err().join("\n");
        assert!(errors.contains("must be Off with the Hyperband strategy"), "{errors}");
        assert!(errors.contains("MaxResource: not given and not found in StaticHyperParameters"), "{errors}");
    }
}
