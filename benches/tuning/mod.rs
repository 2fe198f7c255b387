//! k. A tuning job (issue "Hyperparameter tuning jobs"): `smlocal tune` of the sample job,
//! 20 training jobs 4 at a time (Random, the learning rate, l2 and the optimizer tuned),
//! whole process, against the floor: the same number of the same sample job run by
//! `smlocal train`, 4 processes at a time, with no tuner.

use super::{harness, row};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

fn definition(bucket: &harness::Bucket) -> Value {
    let channels: Vec<Value> = ["train", "validation"]
        .iter()
        .map(|c| {
            json!({
                "ChannelName": c,
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri(&format!("data/{c}/")), "S3DataDistributionType": "FullyReplicated"}}
            })
        })
        .collect();
    json!({
        "AlgorithmSpecification": {
            "TrainingImage": harness::SAMPLE_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "validation:mse", "Regex": "validation_mse=([0-9.eE+-]+)"}]
        },
        "StaticHyperParameters": {"epochs": "30"},
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": bucket.uri("output")},
        // 4 GiB: four fit beside each other on the benchmark machine.
        "ResourceConfig": {"InstanceType": "ml.t3.medium", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300}
    })
}

pub(crate) fn tune(root: &Path, tiny: bool) {
    let (jobs, parallel) = if tiny { (4, 2) } else { (20, 4) };
    let bucket = harness::s3().bucket(&format!("bench-tune-{}", harness::unique()));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/linear");
    for channel in ["train", "validation"] {
        let data = std::fs::read(fixtures.join(channel).join("data.csv")).expect("fixture");
        bucket.put(&format!("data/{channel}/part-0.csv"), &data);
    }
    let sm = harness::Smlocal::new();
    let name = format!("bench-{}", harness::unique());
    let request = json!({
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "validation:mse"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": {
                "ContinuousParameterRanges": [
                    {"Name": "learning_rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
                    {"Name": "l2", "MinValue": "0", "MaxValue": "0.05"}
                ],
                "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["gd", "momentum"]}]
            },
            "RandomSeed": 1
        },
        "TrainingJobDefinition": definition(&bucket)
    });
    let file = root.join("tune-request.json");
    std::fs::write(&file, request.to_string()).expect("write the request");
    let started = Instant::now();
    let out = sm.command().arg("tune").arg(&file).output().expect("smlocal tune");
    let tuned = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The floor: the same job, `smlocal train`, `parallel` processes at a time.
    let mut requests = Vec::new();
    for i in 0..jobs {
        let mut r = harness::sample_request(&format!("bench-floor-{}-{i}", harness::unique()), &bucket, 30);
        r["ResourceConfig"]["InstanceType"] = json!("ml.t3.medium");
        let path = root.join(format!("floor-{i}.json"));
        std::fs::write(&path, r.to_string()).expect("write a request");
        requests.push(path);
    }
    let started = Instant::now();
    for batch in requests.chunks(parallel) {
        let children: Vec<_> = batch
            .iter()
            .map(|p| {
                sm.command().arg("train").arg(p).stdout(std::process::Stdio::null()).spawn().expect("smlocal train")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().is_ok_and(|s| s.success()), "smlocal train failed");
        }
    }
    let floor = started.elapsed().as_secs_f64();
    row(&format!("k. tune {jobs} jobs {parallel} at a time (s)"), tuned, floor, " s");
}
