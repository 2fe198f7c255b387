//! AWS's way of running a framework script: SageMaker's training toolkit (PyPI
//! `sagemaker-training`) in an image built as AWS builds theirs, driven by requests as the
//! SDK's estimators send them and by the SDK itself.

use crate::harness::*;
use serde_json::{Value, json};

fn script() -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/toolkit/train.py"))
        .expect("train.py")
}

/// y = 3x + 1 over two files.
fn put_data(bucket: &Bucket) {
    bucket.put("data/train/a.csv", b"0,1\n1,4\n2,7\n");
    bucket.put("data/train/b.csv", b"3,10\n4,13\n");
}

/// A CreateTrainingJob request as the SDK's SKLearn estimator sends it with
/// `enable_network_isolation=True`: the code as a channel, hyperparameters JSON-encoded.
fn isolated_request(name: &str, bucket: &Bucket, hosts: u32, extra: &[(&str, &str)]) -> Value {
    let mut hyperparameters = json!({
        "sagemaker_program": "\"train.py\"",
        "sagemaker_submit_directory": "\"/opt/ml/input/data/code/sourcedir.tar.gz\"",
        "sagemaker_container_log_level": "20",
        "sagemaker_region": "\"us-west-2\"",
    });
    for (k, v) in extra {
        hyperparameters[*k] = json!(v);
    }
    let channel = |name: &str, uri: String| json!({"ChannelName": name, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}});
    json!({
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": TOOLKIT_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "train:rmse", "Regex": "#011train-rmse:([0-9.]+)"}],
        },
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            channel("train", bucket.uri("data/train/")),
            channel("code", bucket.uri(&format!("{name}/source/sourcedir.tar.gz"))),
        ],
        "OutputDataConfig": {"S3OutputPath": bucket.uri("output")},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": hosts, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
        "EnableNetworkIsolation": true,
    })
}

fn seen(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| l.split_once("seen: ").map(|(_, json)| serde_json::from_str(json).expect("seen json")))
        .collect()
}

#[test]
fn the_toolkit_runs_a_script_shipped_as_a_code_channel_isolated_on_one_host_and_on_two() {
    toolkit_image();
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("toolkit-{}", unique()));
    put_data(&bucket);
    for hosts in [1u32, 2] {
        let name = format!("toolkit-isolated-{hosts}");
        bucket.put(&format!("{name}/source/sourcedir.tar.gz"), &sourcedir(&[("train.py", &script())]));
        let started = std::time::Instant::now();
        let run = sm.train(&isolated_request(&name, &bucket, hosts, &[]), &[]);
        assert_eq!(run.code, 0, "{run:?}");
        // The toolkit waits up to 15 minutes for every host name; here they resolve at once.
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "took {:?}", started.elapsed());
        let seen = seen(&run.stdout);
        assert_eq!(seen.len(), hosts as usize, "{run:?}");
        let names: Vec<String> = (1..=hosts).map(|i| format!("algo-{i}")).collect();
        for s in &seen {
            assert_eq!(s["hosts"], json!(names), "{s}");
            assert_eq!(s["rows"], 5);
            assert_eq!(s["num_cpus"], 2, "SM_NUM_CPUS is the instance's vCPUs (ml.m5.large: 2): {s}");
        }
        let record = sm.describe(&name);
        let rmse =
            record["FinalMetricDataList"].as_array().and_then(|m| m.iter().find(|m| m["MetricName"] == "train:rmse"));
        assert!(
            rmse.is_some_and(|m| m["Value"].as_f64().is_some_and(|v| v < 0.01)),
            "a #011 regex matched the tabbed line: {record:#}"
        );
        let model = tar_entries(&bucket.get(&format!("output/{name}/output/model.tar.gz")).unwrap());
        assert!(
            model.iter().any(|(p, _)| p == "model.joblib"),
            "{:?}",
            model.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_script_that_raises_fails_the_job_with_the_algorithm_error_sagemaker_reports() {
    toolkit_image();
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("toolkit-fail-{}", unique()));
    put_data(&bucket);
    let name = "toolkit-raises";
    bucket.put(&format!("{name}/source/sourcedir.tar.gz"), &sourcedir(&[("train.py", &script())]));
    let run = sm.train(&isolated_request(name, &bucket, 1, &[("fail", "\"yes\"")]), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let reason = sm.describe(name)["FailureReason"].as_str().unwrap_or_default().to_string();
    // The toolkit's own failure file, with SageMaker's prefix.
    assert!(reason.starts_with("AlgorithmError: ExecuteUserScriptError:"), "{reason}");
    assert!(reason.contains("ExitCode 1") && reason.contains("train.py"), "{reason}");
    assert!(run.stdout.contains("asked to fail by the fail hyperparameter"), "the traceback is in the logs: {run:?}");
}

#[test]
fn the_sdks_sklearn_estimator_fits_through_the_server_isolated_and_not_and_its_analytics_read_the_metrics() {
    toolkit_image();
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("sdk-sklearn-{}", unique()));
    put_data(&bucket);
    let server = sm.serve(&["--max-parallel", "2", "--pass-aws-credentials"]);
    // (The SDK's SKLearn refuses instance_count > 1; two isolated hosts are tested above.)
    // The second run names no image: the SDK picks AWS's for framework_version 1.2-1.
    for (isolated, hosts, image) in [("1", "1", TOOLKIT_IMAGE), ("0", "1", "-")] {
        let run =
            python(&sm, &server, "sdk_sklearn.py", &[image, &bucket.uri("data"), &bucket.uri("out"), isolated, hosts]);
        assert_eq!(run.code, 0, "isolated={isolated} hosts={hosts}: {run:?}");
        if image == "-" {
            assert!(
                run.stdout.contains(".dkr.ecr.us-west-2.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"),
                "{run:?}"
            );
            assert!(
                run.stdout.contains("a local stand-in for SageMaker's sagemaker-scikit-learn:1.2-1-cpu-py3 image"),
                "{run:?}"
            );
        }
        let model = run.stdout.lines().find_map(|l| l.strip_prefix("model_data=")).expect("model_data").to_string();
        let key = model.splitn(4, '/').nth(3).unwrap();
        let entries = tar_entries(&bucket.get(key).unwrap_or_else(|| panic!("no model at {model}")));
        assert!(entries.iter().any(|(p, _)| p == "model.joblib"), "{run:?}");
        if let Some(timing) = run.stdout.lines().find(|l| l.starts_with("fit_seconds=")) {
            eprintln!("SDK SKLearn fit (isolated={isolated}): {timing}");
        }
        let analytics = run.stdout.lines().find_map(|l| l.strip_prefix("analytics=")).expect("analytics").to_string();
        let rows: Vec<Value> = serde_json::from_str(&analytics).unwrap();
        assert!(!rows.is_empty() && rows.iter().all(|r| r["metric_name"] == "train:rmse"), "{analytics}");
    }
}

#[test]
fn checkpointconfig_json_is_resumed_from_and_tensorboard_files_are_synced() {
    toolkit_image();
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("toolkit-ckpt-{}", unique()));
    put_data(&bucket);
    for (run_no, name) in ["toolkit-ckpt-1", "toolkit-ckpt-2"].iter().enumerate() {
        bucket.put(&format!("{name}/source/sourcedir.tar.gz"), &sourcedir(&[("train.py", &script())]));
        let mut request = isolated_request(name, &bucket, 1, &[]);
        request["CheckpointConfig"] = json!({"S3Uri": bucket.uri("checkpoints/shared")});
        request["TensorBoardOutputConfig"] = json!({"S3OutputPath": bucket.uri("tensorboard")});
        let run = sm.train(&request, &[]);
        assert_eq!(run.code, 0, "{run:?}");
        let expected = if run_no == 0 { "no checkpoint: starting fresh" } else { "resumed after 1 rounds" };
        assert!(run.stdout.contains(expected), "{run:?}");
        let events = bucket.get(&format!("tensorboard/{name}/tensorboard-output/events.out.tfevents.smlocal"));
        assert!(events.is_some_and(|e| e.starts_with(b"rmse ")), "TensorBoard's folder reached its S3OutputPath");
    }
    assert_eq!(bucket.get("checkpoints/shared/rounds.txt").as_deref(), Some(&b"2"[..]));
}
