//! From a request that matches the API to a job smlocal can run: the checks the service makes
//! beyond the model (unique channels, compiling regexes, one way to size the cluster), what a
//! workstation cannot honour, and the resolved plan (hosts, groups, caps, channels).

use crate::resources::{self, Host, InstanceSpec, Limits, human_bytes};
use crate::spec::{self, InputMode, RecordWrapper, Request};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{}", spec::validation_sentence(.0))]
    Constraints(Vec<String>),
    #[error(
        "AlgorithmSpecification is required: smlocal needs AlgorithmSpecification.TrainingImage to know what to run"
    )]
    NoAlgorithmSpecification,
    #[error(
        "AlgorithmSpecification.AlgorithmName '{0}' refers to an algorithm resource in your AWS account; smlocal runs images, so set AlgorithmSpecification.TrainingImage to a locally available image"
    )]
    AlgorithmResource(String),
    #[error("AlgorithmSpecification.TrainingImage is required: name a Docker image that exists on this machine")]
    NoTrainingImage,
    #[error(
        "ResourceConfig is required: set ResourceConfig.InstanceType and ResourceConfig.InstanceCount (e.g. \"ml.m5.large\" and 1)"
    )]
    NoResourceConfig,
    #[error(
        "InputDataConfig[{index}] (channel '{channel}'): only DataSource.S3DataSource is supported (with s3:// or file:// URIs); FileSystemDataSource and DatasetSource need AWS"
    )]
    DataSource { index: usize, channel: String },
    #[error(
        "InputDataConfig[{index}].DataSource.S3DataSource.S3DataType '{data_type}' is not supported; use S3Prefix, ManifestFile or AugmentedManifestFile"
    )]
    DataType { index: usize, data_type: String },
    /// A channel whose settings do not go together, in AWS's words where AWS has them.
    #[error("InputDataConfig[{index}] (channel '{channel}'): {reason}")]
    Channel { index: usize, channel: String, reason: String },
    #[error(transparent)]
    Resources(#[from] resources::ResourceError),
    /// The cluster does not fit this machine's memory beyond the reserve.
    #[error(
        "ResourceConfig asks for {} of memory ({}), but this machine has {} for containers ({} minus a {} reserve). Use smaller or fewer instances, lower the reserve with --memory-reserve, or run with --oversubscribe to scale every container's memory cap down by the same factor (here to {}%)",
        human_bytes(*.wanted), .groups.join(" + "), human_bytes(*.usable), human_bytes(*.machine), human_bytes(*.reserve), (.scale * 100.0) as u64
    )]
    DoesNotFit {
        /// Bytes the cluster's instance types have in all.
        wanted: u64,
        /// `N × type at size`, per instance group.
        groups: Vec<String>,
        /// Bytes this machine gives containers.
        usable: u64,
        machine: u64,
        reserve: u64,
        /// The factor `--oversubscribe` would scale every cap by.
        scale: f64,
    },
}

impl JobError {
    /// Every planning error is the request's to fix.
    pub fn aws_kind(&self) -> spec::AwsErrorKind {
        spec::AwsErrorKind::Validation
    }
}

/// How smlocal was asked to run, beyond the request itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: Host,
    /// Bytes of host memory no container may take.
    pub reserve: u64,
    pub region: String,
    /// Scale every container's memory cap down to fit, instead of refusing the job.
    pub oversubscribe: bool,
}

impl Settings {
    /// This machine as it is now: its CPUs and memory, the reserve (`None` for the default,
    /// the larger of 1 GiB and 10% of memory) and the region jobs run in.
    pub fn detect(
        reserve: Option<u64>,
        oversubscribe: bool,
        region: &str,
    ) -> Result<Settings, resources::ResourceError> {
        let host = Host::detect();
        let reserve = reserve.unwrap_or_else(|| host.default_reserve());
        if reserve >= host.memory_bytes {
            return Err(resources::ResourceError::ReserveTooLarge { reserve, memory: host.memory_bytes });
        }
        Ok(Settings { host, reserve, region: region.to_string(), oversubscribe })
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub arn: String,
    pub region: String,
    pub image: String,
    /// Replaces the image's entrypoint when the request sets `ContainerEntrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `train`, or the request's `ContainerArguments`; none when only the entrypoint is set.
    pub args: Vec<String>,
    pub hyperparameters: Map<String, Value>,
    pub environment: BTreeMap<String, String>,
    pub channels: Vec<ChannelPlan>,
    pub hosts: Vec<HostPlan>,
    pub groups: Vec<GroupPlan>,
    /// The factor every memory cap was scaled by to fit this machine (1.0 when it fits).
    pub memory_scale: f64,
    /// `S3OutputPath` without a trailing slash.
    pub output_path: String,
    pub compress: bool,
    pub max_runtime: Option<Duration>,
    pub network_isolation: bool,
    pub metric_definitions: Vec<spec::MetricDefinition>,
    pub checkpoint: Option<CheckpointPlan>,
    /// `TensorBoardOutputConfig`: the folder synced while training, and where to.
    pub tensorboard: Option<CheckpointPlan>,
    pub request: Request,
    /// One line per thing in the request that smlocal accepts but does not act on.
    pub notices: Vec<String>,
}

/// Where checkpoints live: `S3Uri`, and the folder the algorithm sees.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPlan {
    pub uri: String,
    pub local_path: String,
}

/// SageMaker's default `TensorBoardOutputConfig.LocalPath`.
pub(crate) const DEFAULT_TENSORBOARD_PATH: &str = "/opt/ml/output/tensorboard";

/// SageMaker's default `CheckpointConfig.LocalPath`.
pub(crate) const DEFAULT_CHECKPOINT_PATH: &str = "/opt/ml/checkpoints";

#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    S3Prefix,
    ManifestFile,
    /// JSON Lines whose `AttributeNames` are sent (Pipe mode only).
    AugmentedManifestFile,
}

#[derive(Debug, Clone)]
pub struct ChannelPlan {
    pub name: String,
    pub uri: String,
    pub data_type: DataType,
    pub sharded: bool,
    pub content_type: Option<String>,
    pub record_wrapper: RecordWrapper,
    /// How the algorithm sees the channel: files (File), files it cannot change (FastFile),
    /// or a FIFO per epoch (Pipe).
    pub input_mode: InputMode,
    /// `CompressionType: Gzip`: Pipe mode decompresses each object into the FIFO.
    pub gzip: bool,
    /// `AttributeNames` of an augmented manifest, in the order they are sent.
    pub attribute_names: Vec<String>,
    pub shuffle_seed: Option<i64>,
    /// Instance groups that receive this channel; empty means all.
    pub groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HostPlan {
    pub name: String,
    pub group: String,
    pub instance: InstanceSpec,
    pub limits: Limits,
    /// The cores the container is pinned to, so `nproc`, `os.cpu_count()` and the toolkit's
    /// `SM_NUM_CPUS` say the instance's vCPUs; None when it has all of this machine's.
    pub cpuset: Option<Vec<u32>>,
}

impl HostPlan {
    /// The cores it is pinned to as the kernel lists them (`0,1`), or None for all.
    pub fn cores(&self) -> Option<String> {
        self.cpuset.as_deref().map(resources::cpu_list)
    }
}

#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub name: String,
    pub instance_type: String,
    pub hosts: Vec<String>,
}

impl Job {
    /// `model.tar.gz`, or with `CompressionType: NONE` the folder the model's files are
    /// uploaded to one by one, as SageMaker does.
    pub fn model_artifacts_uri(&self) -> String {
        if self.compress {
            format!("{}/{}/output/model.tar.gz", self.output_path, self.name)
        } else {
            format!("{}/{}/output/model/", self.output_path, self.name)
        }
    }
    pub fn output_artifacts_uri(&self) -> String {
        format!("{}/{}/output/output.tar.gz", self.output_path, self.name)
    }
}

/// The fields AWS accepts that a workstation cannot honour: echoed in the record, ignored,
/// and named once so nothing is dropped silently.
const IGNORED: &[(&str, &str)] = &[
    ("VpcConfig", "no effect: the job runs on its own Docker network"),
    ("Tags", "kept in the record only"),
    ("EnableInterContainerTrafficEncryption", "no effect: traffic stays on this machine"),
    ("EnableManagedSpotTraining", "the job runs on demand; --interrupt-after DURATION replays a spot interruption"),
    ("DebugHookConfig", "written to /opt/ml/input/config/debughookconfig.json; nothing else acts on it"),
    ("DebugRuleConfigurations", "no effect on a workstation"),
    ("ExperimentConfig", "no effect on a workstation"),
    ("ProfilerConfig", "written to /opt/ml/input/config/profilerconfig.json; nothing else acts on it"),
    ("ProfilerRuleConfigurations", "no effect on a workstation"),
    ("RetryStrategy", "no effect: smlocal does not retry jobs"),
    ("RemoteDebugConfig", "no effect on a workstation"),
    ("InfraCheckConfig", "no effect on a workstation"),
    ("SessionChainingConfig", "no effect on a workstation"),
];

pub fn plan(request: Request, settings: &Settings) -> Result<Job, JobError> {
    let f = &request.fields;
    let mut errors = Vec::new();
    let mut notices: Vec<String> = IGNORED
        .iter()
        .filter(|(k, _)| request.raw.contains_key(*k))
        .map(|(k, what)| format!("{k} is accepted and recorded; {what}"))
        .collect();

    let algo = f.algorithm_specification.as_ref().ok_or(JobError::NoAlgorithmSpecification)?;
    let image = match (&algo.training_image, &algo.algorithm_name) {
        (Some(image), _) if !image.is_empty() => image.clone(),
        (_, Some(name)) => {
            return Err(JobError::AlgorithmResource(name.clone()));
        }
        _ => {
            return Err(JobError::NoTrainingImage);
        }
    };

    for (i, metric) in algo.metric_definitions.iter().enumerate() {
        if let Err(e) = regex::Regex::new(&metric.regex) {
            errors.push(format!(
                "Value '{}' at 'algorithmSpecification.metricDefinitions.{}.member.regex' failed to satisfy constraint: the regex of metric '{}' does not compile: {}",
                metric.regex,
                i + 1,
                metric.name,
                e.to_string().lines().last().unwrap_or("invalid")
            ));
        }
    }

    let (groups, hosts, memory_scale) = cluster(&request, settings, &mut errors)?;

    let mut seen = HashSet::new();
    let mut channels = Vec::new();
    for (i, c) in f.input_data_config.iter().enumerate() {
        // The model's pattern allows them, but `/opt/ml/input/data/..` is the input folder
        // itself: its config files would be hidden under the channel.
        if c.channel_name == "." || c.channel_name == ".." {
            errors.push(format!(
                "Value '{}' at 'inputDataConfig.{}.member.channelName' failed to satisfy constraint: a channel name cannot be '.' or '..', which name /opt/ml/input/data itself or its parent",
                c.channel_name,
                i + 1
            ));
        }
        if !seen.insert(c.channel_name.as_str()) {
            errors.push(format!(
                "Value '{}' at 'inputDataConfig.{}.member.channelName' failed to satisfy constraint: channel names must be unique within a job",
                c.channel_name,
                i + 1
            ));
        }
        let Some(s3) = &c.data_source.s3_data_source else {
            return Err(JobError::DataSource { index: i, channel: c.channel_name.clone() });
        };
        let data_type = match s3.s3_data_type.as_str() {
            "S3Prefix" => DataType::S3Prefix,
            "ManifestFile" => DataType::ManifestFile,
            "AugmentedManifestFile" => DataType::AugmentedManifestFile,
            other => {
                return Err(JobError::DataType { index: i, data_type: other.to_string() });
            }
        };
        let input_mode = c.input_mode.unwrap_or(algo.training_input_mode);
        let refuse =
            |reason: &str| JobError::Channel { index: i, channel: c.channel_name.clone(), reason: reason.into() };
        match (&data_type, input_mode) {
            (DataType::AugmentedManifestFile, InputMode::File | InputMode::FastFile) => {
                return Err(refuse("AugmentedManifestFile can only be used if the Channel's input mode is Pipe."));
            }
            (DataType::ManifestFile, InputMode::FastFile) => {
                return Err(refuse(
                    "FastFile mode supports S3DataType S3Prefix only; use File or Pipe mode for a ManifestFile",
                ));
            }
            _ => {}
        }
        if data_type == DataType::AugmentedManifestFile && s3.attribute_names.is_empty() {
            return Err(refuse(
                "an AugmentedManifestFile needs S3DataSource.AttributeNames: the attributes of each line to send, in order",
            ));
        }
        if data_type != DataType::AugmentedManifestFile && !s3.attribute_names.is_empty() {
            return Err(refuse("S3DataSource.AttributeNames applies to an AugmentedManifestFile only"));
        }
        let gzip = c.compression_type.as_deref() == Some("Gzip");
        let record_wrapper = c.record_wrapper_type.unwrap_or(RecordWrapper::None);
        if input_mode != InputMode::Pipe {
            if gzip {
                notices.push(format!(
                    "InputDataConfig[{i}].CompressionType applies to Pipe mode only; channel '{}' is staged as stored",
                    c.channel_name
                ));
            }
            if record_wrapper == RecordWrapper::RecordIO {
                notices.push(format!(
                    "InputDataConfig[{i}].RecordWrapperType RecordIO applies to Pipe mode only; channel '{}' is staged as stored",
                    c.channel_name
                ));
            }
        }
        for g in &s3.instance_group_names {
            if !groups.iter().any(|p| &p.name == g) {
                errors.push(format!(
                    "Value '{g}' at 'inputDataConfig.{}.member.dataSource.s3DataSource.instanceGroupNames' failed to satisfy constraint: no instance group has this name",
                    i + 1
                ));
            }
        }
        channels.push(ChannelPlan {
            name: c.channel_name.clone(),
            uri: s3.s3_uri.clone(),
            data_type,
            sharded: s3.s3_data_distribution_type.as_deref() == Some("ShardedByS3Key"),
            content_type: c.content_type.clone(),
            record_wrapper,
            input_mode,
            gzip,
            attribute_names: s3.attribute_names.clone(),
            shuffle_seed: c.shuffle_config.as_ref().map(|s| s.seed),
            groups: s3.instance_group_names.clone(),
        });
    }

    let checkpoint = f.checkpoint_config.as_ref().map(|c| CheckpointPlan {
        uri: c.s3_uri.clone(),
        local_path: c.local_path.clone().unwrap_or_else(|| DEFAULT_CHECKPOINT_PATH.into()),
    });
    // SageMaker syncs the folder to `<S3OutputPath>/<job>/tensorboard-output/`.
    let tensorboard = request.raw.get("TensorBoardOutputConfig").and_then(|t| {
        let output = t.get("S3OutputPath")?.as_str()?.trim_end_matches('/');
        let local = t.get("LocalPath").and_then(Value::as_str).unwrap_or(DEFAULT_TENSORBOARD_PATH);
        Some(CheckpointPlan {
            uri: format!("{output}/{}/tensorboard-output/", f.training_job_name),
            local_path: local.trim_end_matches('/').to_string(),
        })
    });
    if let Some(t) = &tensorboard
        && (!t.local_path.starts_with('/') || t.local_path.split('/').any(|p| p == ".."))
    {
        errors.push(format!(
            "Value '{}' at 'tensorBoardOutputConfig.localPath' failed to satisfy constraint: it must be an absolute path in the container, such as {DEFAULT_TENSORBOARD_PATH}",
            t.local_path
        ));
    }
    if let Some(c) = &checkpoint
        && (!c.local_path.starts_with('/') || c.local_path.split('/').any(|p| p == ".."))
    {
        errors.push(format!(
            "Value '{}' at 'checkpointConfig.localPath' failed to satisfy constraint: it must be an absolute path in the container, such as {DEFAULT_CHECKPOINT_PATH}",
            c.local_path
        ));
    }

    if !errors.is_empty() {
        return Err(JobError::Constraints(errors));
    }

    let compress = f.output_data_config.compression_type.as_deref() != Some("NONE");
    let name = f.training_job_name.clone();
    // A built-in algorithm's metrics are SageMaker's to define: it fills them in (and
    // DescribeTrainingJob shows them) when the request names none. A script run by the
    // same image prints what its author chose, so it gets none.
    let script_mode = f.hyper_parameters.contains_key("sagemaker_program");
    let mut metric_definitions = algo.metric_definitions.clone();
    let mut request = request;
    if metric_definitions.is_empty()
        && !script_mode
        && let Some(defs) = crate::images::builtin_metric_definitions(&image)
    {
        let listed: Vec<Value> = defs.iter().map(|d| serde_json::json!({"Name": d.name, "Regex": d.regex})).collect();
        if let Some(Value::Object(spec)) = request.raw.get_mut("AlgorithmSpecification") {
            spec.insert("MetricDefinitions".into(), Value::Array(listed));
        }
        metric_definitions = defs;
    }
    let f = &request.fields;
    let algo = f.algorithm_specification.as_ref().ok_or(JobError::NoAlgorithmSpecification)?;
    Ok(Job {
        arn: format!(
            "arn:aws:sagemaker:{}:{}:training-job/{}",
            settings.region,
            account(&f.role_arn),
            name.to_lowercase()
        ),
        region: settings.region.clone(),
        image,
        entrypoint: algo.container_entrypoint.clone(),
        args: match (&algo.container_entrypoint, &algo.container_arguments) {
            (_, Some(args)) => args.clone(),
            (Some(_), None) => Vec::new(),
            (None, None) => vec!["train".into()],
        },
        hyperparameters: f.hyper_parameters.clone(),
        environment: f.environment.clone(),
        channels,
        hosts,
        groups,
        memory_scale,
        output_path: f.output_data_config.s3_output_path.trim_end_matches('/').to_string(),
        compress,
        max_runtime: f.stopping_condition.as_ref().and_then(|s| s.max_runtime_in_seconds).map(Duration::from_secs),
        network_isolation: f.enable_network_isolation,
        metric_definitions,
        checkpoint,
        tensorboard,
        notices,
        name,
        request,
    })
}

/// The job belongs to the account of the role it runs as (`arn:aws:iam::123456789012:role/R`).
fn account(role_arn: &str) -> &str {
    role_arn.split(':').nth(4).filter(|a| !a.is_empty()).unwrap_or("000000000000")
}

/// Hosts `algo-1`..`algo-N` in group order, as SageMaker numbers them, each capped at its
/// instance type; all of them must fit this machine's memory beyond the reserve.
fn cluster(
    request: &Request,
    settings: &Settings,
    errors: &mut Vec<String>,
) -> Result<(Vec<GroupPlan>, Vec<HostPlan>, f64), JobError> {
    let none = (Vec::new(), Vec::new(), 1.0);
    let Some(rc) = &request.fields.resource_config else {
        return Err(JobError::NoResourceConfig);
    };
    let groups: Vec<(String, String, i64)> = match (&rc.instance_type, rc.instance_count, rc.instance_groups.is_empty())
    {
        (Some(t), Some(n), true) => vec![("homogeneousCluster".into(), t.clone(), n)],
        (None, None, false) => rc
            .instance_groups
            .iter()
            .map(|g| (g.instance_group_name.clone(), g.instance_type.clone(), g.instance_count))
            .collect(),
        (_, _, false) => {
            errors
                .push("ResourceConfig: set either InstanceType and InstanceCount, or InstanceGroups, not both".into());
            return Ok(none);
        }
        _ => {
            errors.push(
                "ResourceConfig: InstanceType and InstanceCount are both required (or use InstanceGroups)".into(),
            );
            return Ok(none);
        }
    };
    let mut names = HashSet::new();
    for (i, (name, _, _)) in groups.iter().enumerate() {
        if !names.insert(name.as_str()) {
            errors.push(format!(
                "Value '{name}' at 'resourceConfig.instanceGroups.{}.member.instanceGroupName' failed to satisfy constraint: instance group names must be unique",
                i + 1
            ));
        }
    }
    let total: i64 = groups.iter().map(|g| g.2).sum();
    if total < 1 {
        errors.push(format!(
            "Value '{total}' at 'resourceConfig.instanceCount' failed to satisfy constraint: Member must have value greater than or equal to 1"
        ));
        return Ok(none);
    }
    let usable = resources::usable_memory(&settings.host, settings.reserve);
    let mut sized = Vec::new();
    for (name, instance_type, count) in groups {
        let mut instance = resources::instance(&instance_type, &settings.host)?;
        if instance_type == "local" {
            // "This machine": an equal share of what the containers may use.
            instance.memory_bytes = usable / total as u64;
        }
        sized.push((name, instance_type, count, instance));
    }
    let wanted: u64 = sized.iter().map(|(_, _, n, i)| i.memory_bytes * *n as u64).sum();
    let scale = if wanted <= usable { 1.0 } else { usable as f64 / wanted as f64 };
    if scale < 1.0 && !settings.oversubscribe {
        let groups: Vec<String> =
            sized.iter().map(|(_, t, n, i)| format!("{n} × {t} at {}", human_bytes(i.memory_bytes))).collect();
        return Err(JobError::DoesNotFit {
            wanted,
            groups,
            usable,
            machine: settings.host.memory_bytes,
            reserve: settings.reserve,
            scale,
        });
    }
    let mut plans = Vec::new();
    let mut hosts = Vec::new();
    for (name, instance_type, count, instance) in sized {
        let limits = resources::limits(&instance, &settings.host, scale);
        let mut group_hosts = Vec::new();
        for _ in 0..count {
            let host = format!("algo-{}", hosts.len() + 1);
            group_hosts.push(host.clone());
            let cpuset = resources::cpuset(hosts.len(), instance.vcpu, settings.host.cpus);
            hosts.push(HostPlan { name: host, group: name.clone(), instance: instance.clone(), limits, cpuset });
        }
        plans.push(GroupPlan { name, instance_type, hosts: group_hosts });
    }
    Ok((plans, hosts, scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Settings {
        Settings {
            host: Host { cpus: 2, memory_bytes: 16 << 30 },
            reserve: 1 << 30,
            region: "eu-west-1".into(),
            oversubscribe: false,
        }
    }

    fn request(edit: impl FnOnce(&mut Value)) -> Request {
        let mut v = json!({
            "TrainingJobName": "Demo-1",
            "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
            "AlgorithmSpecification": {"TrainingImage": "img:1", "TrainingInputMode": "File"},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/train/"}}}],
            "OutputDataConfig": {"S3OutputPath": "s3://b/out/"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}
        });
        edit(&mut v);
        spec::from_value(v).unwrap()
    }

    #[test]
    fn sagemaker_s_xgboost_gets_its_metric_definitions_unless_the_request_or_a_script_names_them() {
        let xgboost = "683313688378.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.7-1";
        let job =
            plan(request(|v| v["AlgorithmSpecification"]["TrainingImage"] = json!(xgboost)), &settings()).unwrap();
        assert!(job.metric_definitions.iter().any(|d| d.name == "validation:rmse"));
        let shown = &job.request.raw["AlgorithmSpecification"]["MetricDefinitions"];
        assert_eq!(
            shown.as_array().map(Vec::len),
            Some(job.metric_definitions.len()),
            "DescribeTrainingJob shows them"
        );
        let own = plan(
            request(|v| {
                v["AlgorithmSpecification"]["TrainingImage"] = json!(xgboost);
                v["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "mine", "Regex": "m=(.*)"}]);
            }),
            &settings(),
        )
        .unwrap();
        assert_eq!(own.metric_definitions.len(), 1);
        let script = plan(
            request(|v| {
                v["AlgorithmSpecification"]["TrainingImage"] = json!(xgboost);
                v["HyperParameters"] = json!({"sagemaker_program": "\"train.py\""});
            }),
            &settings(),
        )
        .unwrap();
        assert!(script.metric_definitions.is_empty());
        assert!(plan(request(|_| {}), &settings()).unwrap().metric_definitions.is_empty());
    }

    #[test]
    fn a_plain_request_becomes_one_host_with_train() {
        let job = plan(request(|_| {}), &settings()).unwrap();
        assert_eq!(job.args, ["train"]);
        assert_eq!(job.hosts.len(), 1);
        assert_eq!(job.hosts[0].name, "algo-1");
        assert_eq!(job.groups[0].name, "homogeneousCluster");
        assert_eq!(job.hosts[0].limits.memory_bytes, 8 << 30);
        assert_eq!(job.arn, "arn:aws:sagemaker:eu-west-1:123456789012:training-job/demo-1");
        assert_eq!(job.model_artifacts_uri(), "s3://b/out/Demo-1/output/model.tar.gz");
        assert_eq!(job.max_runtime, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn entrypoint_drops_train_and_arguments_replace_it() {
        let job = plan(
            request(|v| v["AlgorithmSpecification"]["ContainerEntrypoint"] = json!(["python", "x.py"])),
            &settings(),
        )
        .unwrap();
        assert!(job.args.is_empty());
        let job = plan(
            request(|v| v["AlgorithmSpecification"]["ContainerArguments"] = json!(["fit", "--fast"])),
            &settings(),
        )
        .unwrap();
        assert_eq!(job.args, ["fit", "--fast"]);
    }

    #[test]
    fn a_channel_named_dot_or_dot_dot_is_refused() {
        for name in [".", ".."] {
            let err = plan(request(|v| v["InputDataConfig"][0]["ChannelName"] = json!(name)), &settings())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("Value '{name}' at 'inputDataConfig.1.member.channelName'")), "{err}");
        }
        assert!(plan(request(|v| v["InputDataConfig"][0]["ChannelName"] = json!(".hidden")), &settings()).is_ok());
    }

    #[test]
    fn duplicate_channels_and_bad_regexes_are_refused_by_field() {
        let err = plan(
            request(|v| {
                let c = v["InputDataConfig"][0].clone();
                v["InputDataConfig"].as_array_mut().unwrap().push(c);
                v["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "loss", "Regex": "loss=([0-9"}]);
            }),
            &settings(),
        )
        .unwrap_err();
        assert_eq!(err.aws_kind(), spec::AwsErrorKind::Validation);
        let err = err.to_string();
        assert!(err.starts_with("2 validation errors detected"), "{err}");
        assert!(err.contains("'inputDataConfig.2.member.channelName'"), "{err}");
        assert!(err.contains("metric 'loss'"), "{err}");
    }

    #[test]
    fn instance_groups_number_hosts_in_order() {
        let job = plan(
            request(|v| {
                v["ResourceConfig"] = json!({"InstanceGroups": [
                    {"InstanceGroupName": "ps", "InstanceType": "ml.t3.medium", "InstanceCount": 1},
                    {"InstanceGroupName": "workers", "InstanceType": "ml.t3.medium", "InstanceCount": 2}
                ], "VolumeSizeInGB": 1});
                v["InputDataConfig"][0]["DataSource"]["S3DataSource"]["InstanceGroupNames"] = json!(["workers"]);
            }),
            &settings(),
        )
        .unwrap();
        let hosts: Vec<(&str, &str)> = job.hosts.iter().map(|h| (h.name.as_str(), h.group.as_str())).collect();
        assert_eq!(hosts, [("algo-1", "ps"), ("algo-2", "workers"), ("algo-3", "workers")]);
        assert_eq!(job.groups[1].hosts, ["algo-2", "algo-3"]);
        assert_eq!(job.channels[0].groups, ["workers"]);
    }

    #[test]
    fn a_cluster_that_does_not_fit_is_refused_with_the_numbers_unless_oversubscribed() {
        // 2 × 8 GiB on a machine with 15 GiB usable.
        let two = |v: &mut Value| v["ResourceConfig"]["InstanceCount"] = json!(2);
        let err = plan(request(two), &settings()).unwrap_err().to_string();
        assert!(
            err.contains("16.0 GiB")
                && err.contains("15.0 GiB")
                && err.contains("--oversubscribe")
                && err.contains("93%"),
            "{err}"
        );
        let mut s = settings();
        s.oversubscribe = true;
        let job = plan(request(two), &s).unwrap();
        assert_eq!(job.hosts[1].limits.memory_bytes, 15 << 29);
        assert!((job.memory_scale - 15.0 / 16.0).abs() < 1e-9);
    }

    #[test]
    fn an_unknown_instance_group_in_a_channel_is_refused() {
        let err = plan(
            request(|v| v["InputDataConfig"][0]["DataSource"]["S3DataSource"]["InstanceGroupNames"] = json!(["gpu"])),
            &settings(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Value 'gpu'") && err.contains("no instance group has this name"), "{err}");
    }

    #[test]
    fn ignored_fields_are_named() {
        let job = plan(request(|v| v["Tags"] = json!([{"Key": "a", "Value": "b"}])), &settings()).unwrap();
        assert_eq!(job.notices, ["Tags is accepted and recorded; kept in the record only"]);
    }

    #[test]
    fn input_modes_are_planned_per_channel_with_aws_s_refusals() {
        let job =
            plan(request(|v| v["AlgorithmSpecification"]["TrainingInputMode"] = json!("Pipe")), &settings()).unwrap();
        assert_eq!(job.channels[0].input_mode, InputMode::Pipe);
        let job = plan(
            request(|v| {
                v["InputDataConfig"][0]["InputMode"] = json!("FastFile");
                v["InputDataConfig"][0]["CompressionType"] = json!("Gzip");
            }),
            &settings(),
        )
        .unwrap();
        assert_eq!(job.channels[0].input_mode, InputMode::FastFile);
        assert!(
            job.notices.iter().any(|n| n.contains("CompressionType applies to Pipe mode only")),
            "{:?}",
            job.notices
        );
        let augmented = |mode: &'static str, names: Value| {
            move |v: &mut Value| {
                v["AlgorithmSpecification"]["TrainingInputMode"] = json!(mode);
                let s3 = &mut v["InputDataConfig"][0]["DataSource"]["S3DataSource"];
                s3["S3DataType"] = json!("AugmentedManifestFile");
                s3["AttributeNames"] = names;
            }
        };
        let err = plan(request(augmented("File", json!(["source-ref"]))), &settings()).unwrap_err().to_string();
        assert!(err.ends_with("AugmentedManifestFile can only be used if the Channel's input mode is Pipe."), "{err}");
        let err = plan(request(augmented("Pipe", json!([]))), &settings()).unwrap_err().to_string();
        assert!(err.contains("needs S3DataSource.AttributeNames"), "{err}");
        let job = plan(request(augmented("Pipe", json!(["source-ref", "label"]))), &settings()).unwrap();
        assert_eq!(job.channels[0].attribute_names, ["source-ref", "label"]);
        let err = plan(
            request(|v| {
                v["InputDataConfig"][0]["InputMode"] = json!("FastFile");
                v["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataType"] = json!("ManifestFile");
            }),
            &settings(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("FastFile mode supports S3DataType S3Prefix only"), "{err}");
    }
}
