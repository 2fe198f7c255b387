//! SageMaker's own algorithms run unchanged: requests naming AWS's registry images run as
//! smlocal's local stand-ins (`smlocal images`), and the SDK's built-in XGBoost example
//! trains, reports its metrics, and deploys.

use crate::harness::*;
use serde_json::{Value, json};

const XGBOOST: &str = "smlocal/sagemaker-xgboost:1.7-1";

/// y = 3a − 2b + sin(4c) + noise, as CSV rows (label first).
fn rows(n: usize, seed: u64) -> Vec<[f64; 4]> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b, c, noise) = (next(), next(), next(), next());
            [3.0 * a - 2.0 * b + (4.0 * c).sin() + 0.05 * (noise - 0.5), a, b, c]
        })
        .collect()
}

fn csv(rows: &[[f64; 4]]) -> String {
    rows.iter().map(|r| format!("{:.6},{:.6},{:.6},{:.6}\n", r[0], r[1], r[2], r[3])).collect()
}

fn libsvm(rows: &[[f64; 4]]) -> String {
    rows.iter().map(|r| format!("{:.6} 0:{:.6} 1:{:.6} 2:{:.6}\n", r[0], r[1], r[2], r[3])).collect()
}

/// Four training files and one validation file in `format`; the held-out rows as a local CSV.
fn put_data(bucket: &Bucket, sm: &Smlocal, format: &str) -> String {
    let write = |rows: &[[f64; 4]]| if format == "libsvm" { libsvm(rows) } else { csv(rows) };
    for part in 0..4u64 {
        bucket.put(&format!("data/train/part-{part}.{format}"), write(&rows(250, 11 + part)).as_bytes());
    }
    bucket.put(&format!("data/validation/v.{format}"), write(&rows(200, 7)).as_bytes());
    let held_out = sm.home.path().join(format!("held-out-{}.csv", unique()));
    std::fs::write(&held_out, csv(&rows(300, 99))).expect("write the held-out rows");
    held_out.display().to_string()
}

struct Fit {
    run: Run,
    result: Value,
}

#[allow(clippy::too_many_arguments)]
fn sdk_fit(
    sm: &Smlocal,
    server: &Server,
    bucket: &Bucket,
    held_out: &str,
    instances: &str,
    content_type: &str,
    distribution: &str,
    hyperparameters: Value,
    deploy: bool,
) -> Fit {
    let run = python(
        sm,
        server,
        "sdk_xgboost.py",
        &[
            &bucket.uri("data"),
            &bucket.uri("out"),
            instances,
            content_type,
            distribution,
            &hyperparameters.to_string(),
            held_out,
            if deploy { "1" } else { "0" },
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let line = run.stdout.lines().find_map(|l| l.strip_prefix("result=")).unwrap_or_default();
    let result = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    Fit { run, result }
}

fn hyperparameters() -> Value {
    json!({"num_round": 60, "objective": "reg:squarederror", "max_depth": 4, "eta": 0.2})
}

#[test]
fn the_sdk_s_builtin_xgboost_example_trains_reports_its_metrics_and_deploys_unchanged() {
    stand_in("xgboost", XGBOOST);
    let sm = Smlocal::new();
    let server = sm.serve(&[]);
    let bucket = s3().bucket(&format!("xgb-csv-{}", unique()));
    let held_out = put_data(&bucket, &sm, "csv");
    let Fit { run, result } =
        sdk_fit(&sm, &server, &bucket, &held_out, "1", "text/csv", "FullyReplicated", hyperparameters(), true);
    assert_eq!(result["image"], "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1");
    assert_eq!(result["status"], "Completed", "{run:?}");
    assert!(run.stdout.contains("a local stand-in for SageMaker's sagemaker-xgboost:1.7-1 image"), "{run:?}");
    // XGBoost's own line reaches the SDK's log view as CloudWatch shows it, tabs as #011.
    assert!(run.stdout.contains("[59]#011train-rmse:"), "{run:?}");
    assert_eq!(result["model_files"], json!(["xgboost-model"]));
    let rmse = result["rmse"].as_f64().expect("rmse");
    // The label's spread is about 1.1; a fit model is far inside it.
    assert!(rmse < 0.25, "held-out RMSE {rmse}: {run:?}");
    // SageMaker's definitions were filled in (the request named none), and matched.
    let definitions: Vec<&str> = result["definitions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(definitions.contains(&"validation:rmse") && definitions.contains(&"train:auc"), "{definitions:?}");
    let validation = result["final"]["validation:rmse"].as_f64().expect("validation:rmse in FinalMetricDataList");
    assert!(validation > 0.0 && validation < 0.3, "{result}");
    assert!(result["final"]["train:rmse"].as_f64().is_some(), "{result}");
    eprintln!("SDK built-in XGBoost fit through smlocal serve: {}s", result["fit_seconds"]);
    // The endpoint answers CSV and libsvm with the model's own predictions.
    let local: Vec<f64> = serde_json::from_value(result["local"].clone()).unwrap();
    for served in ["served_csv", "served_libsvm"] {
        let got: Vec<f64> = serde_json::from_value(result[served].clone()).unwrap_or_else(|e| panic!("{served}: {e}"));
        assert_eq!(got.len(), local.len(), "{served}");
        for (g, l) in got.iter().zip(&local) {
            assert!((g - l).abs() < 1e-4, "{served}: {got:?} against {local:?}");
        }
    }
}

#[test]
fn libsvm_input_two_sharded_hosts_and_a_bad_hyperparameter_behave_as_on_sagemaker() {
    stand_in("xgboost", XGBOOST);
    let sm = Smlocal::new();
    let server = sm.serve(&[]);
    let bucket = s3().bucket(&format!("xgb-libsvm-{}", unique()));
    let held_out = put_data(&bucket, &sm, "libsvm");
    let Fit { run, result } =
        sdk_fit(&sm, &server, &bucket, &held_out, "1", "text/libsvm", "FullyReplicated", hyperparameters(), false);
    assert_eq!(result["status"], "Completed", "{run:?}");
    assert!(result["rmse"].as_f64().unwrap() < 0.25, "{result}");

    // Two hosts, each with half of the objects, train one model together.
    let Fit { run, result } =
        sdk_fit(&sm, &server, &bucket, &held_out, "2", "text/libsvm", "ShardedByS3Key", hyperparameters(), false);
    assert_eq!(result["status"], "Completed", "{run:?}");
    assert!(run.stdout.contains("algo-2 is worker 1 of 2"), "{run:?}");
    assert!(run.stdout.contains("Train matrix has 500 rows"), "each host read its two objects: {run:?}");
    assert!(result["rmse"].as_f64().unwrap() < 0.25, "{result}");
    assert!(result["final"]["validation:rmse"].as_f64().is_some(), "{result}");

    // The algorithm's own words are the FailureReason.
    let mut bad = hyperparameters();
    bad["eta"] = json!(2);
    let Fit { run, result } =
        sdk_fit(&sm, &server, &bucket, &held_out, "1", "text/libsvm", "FullyReplicated", bad, false);
    assert_eq!(result["status"], "Failed", "{run:?}");
    assert_eq!(result["failure"], "AlgorithmError: Hyperparameter eta: value 2 not in range [0, 1]", "{result}");
    let mut missing = hyperparameters();
    missing.as_object_mut().unwrap().remove("num_round");
    let Fit { result, .. } =
        sdk_fit(&sm, &server, &bucket, &held_out, "1", "text/libsvm", "FullyReplicated", missing, false);
    assert_eq!(result["failure"], "AlgorithmError: Missing required hyperparameter: num_round", "{result}");
}

#[test]
fn smlocal_images_shows_the_map_and_an_unmapped_aws_image_says_how_to_map_it() {
    stand_in("xgboost", XGBOOST);
    images();
    let sm = Smlocal::new();
    let listed = sm.command().env("SMLOCAL_IMAGE_MAP", "kmeans:1=smlocal/probe:latest").arg("images").output().unwrap();
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{out}");
    let line =
        |key: &str| out.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}: {out}")).to_string();
    let xgboost = line("sagemaker-xgboost:1.7-1");
    assert!(
        xgboost.contains(XGBOOST) && xgboost.contains("smlocal's stand-in") && xgboost.contains("yes"),
        "{xgboost}"
    );
    assert!(line("sagemaker-scikit-learn:1.2-1-cpu-py3").contains("smlocal/sagemaker-scikit-learn:1.2-1-cpu-py3"));
    assert!(line("kmeans:1").contains("SMLOCAL_IMAGE_MAP"), "{out}");

    // k-means is one of SageMaker's algorithms smlocal has no stand-in for.
    let bucket = s3().bucket(&format!("unmapped-{}", unique()));
    bucket.put("train/data.txt", b"1");
    let mut request = probe_request("kmeans-here", &bucket, &["print", "I am the mapped image"]);
    request["AlgorithmSpecification"]["TrainingImage"] = json!("382416733822.dkr.ecr.us-east-1.amazonaws.com/kmeans:1");
    let run = sm.train(&request, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    for words in [
        "382416733822.dkr.ecr.us-east-1.amazonaws.com/kmeans:1",
        "no local image is mapped to kmeans:1",
        "SMLOCAL_IMAGE_MAP='kmeans:1=",
        "smlocal images",
    ] {
        assert!(run.stderr.contains(words), "{words}: {run:?}");
    }
    // Mapped, the same request runs.
    let file = sm.home.path().join("request-mapped.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let mapped = sm
        .command()
        .env("SMLOCAL_IMAGE_MAP", "kmeans:1=smlocal/probe:latest")
        .arg("train")
        .arg(&file)
        .output()
        .unwrap();
    let mapped = Run::from(mapped);
    assert_eq!(mapped.code, 0, "{mapped:?}");
    assert!(mapped.stdout.contains("I am the mapped image"), "{mapped:?}");
    assert!(mapped.stderr.contains("running the local image smlocal/probe:latest"), "{mapped:?}");
}

/// Runs `xgboost_data.py` with the SDK's Python (no server needed: it only writes or scores).
fn xgboost_data(args: &[&str]) -> Run {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python/xgboost_data.py");
    let run = Run::from(std::process::Command::new(sdk_python()).arg(script).args(args).output().expect("python"));
    assert_eq!(run.code, 0, "xgboost_data.py {args:?}: {run:?}");
    run
}

/// The model of a completed job, scored on the held-out rows: (RMSE, boosted rounds).
fn score(bucket: &Bucket, sm: &Smlocal, job: &str, held_out: &str) -> (f64, u64) {
    let archive = bucket.get(&format!("output/{job}/output/model.tar.gz")).expect("model.tar.gz uploaded");
    let file = sm.home.path().join(format!("{job}.tar.gz"));
    std::fs::write(&file, archive).expect("write the model");
    let run = xgboost_data(&["score", &file.display().to_string(), held_out]);
    let value = |key: &str| {
        run.stdout.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key}: {run:?}")).to_string()
    };
    (value("rmse=").parse().expect("rmse"), value("rounds=").parse().expect("rounds"))
}

fn xgboost_request(name: &str, bucket: &Bucket, format: &str, content_type: &str, mode: &str, rounds: u32) -> Value {
    let mut r = request(name, "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1", bucket);
    r["AlgorithmSpecification"]["TrainingInputMode"] = json!(mode);
    let channel = |channel: &str| {
        json!({
            "ChannelName": channel,
            "ContentType": content_type,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri(&format!("{format}/{channel}/")), "S3DataDistributionType": "FullyReplicated"}}
        })
    };
    r["InputDataConfig"] = json!([channel("train"), channel("validation")]);
    r["HyperParameters"] =
        json!({"num_round": rounds.to_string(), "objective": "reg:squarederror", "max_depth": "4", "eta": "0.2"});
    r
}

#[test]
fn recordio_protobuf_through_a_pipe_parquet_and_a_resumed_checkpoint_train_as_on_sagemaker() {
    stand_in("xgboost", XGBOOST);
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("xgb-formats-{}", unique()));
    let data = sm.home.path().join("data");
    std::fs::create_dir_all(&data).expect("data folder");
    xgboost_data(&["make", &data.display().to_string()]);
    for format in ["rec", "parquet"] {
        for channel in ["train", "validation"] {
            let bytes = std::fs::read(data.join(format!("{channel}.{format}"))).expect("read the data");
            bucket.put(&format!("{format}/{channel}/part-0.{format}"), &bytes);
        }
    }
    let held_out = data.join("held-out.csv").display().to_string();

    // RecordIO-protobuf written by the SDK, streamed through Pipe mode's FIFOs.
    let name = format!("xgb-rec-{}", unique());
    let run = sm.train(&xgboost_request(&name, &bucket, "rec", "application/x-recordio-protobuf", "Pipe", 40), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Train matrix has 1000 rows and 3 columns"), "{run:?}");
    let (rmse, rounds) = score(&bucket, &sm, &name, &held_out);
    // The label spans about ±6; 40 rounds of depth 4 leave the sine's wiggles.
    assert!(rmse < 0.35 && rounds == 40, "RecordIO: RMSE {rmse} after {rounds} rounds: {run:?}");

    // Parquet, label first, in File mode; with checkpoints kept in S3.
    let prefix = format!("checkpoints/{}", unique());
    let checkpoints = bucket.uri(&prefix);
    let with_checkpoints = |name: &str, rounds: u32| {
        let mut r = xgboost_request(name, &bucket, "parquet", "application/x-parquet", "File", rounds);
        r["CheckpointConfig"] = json!({"S3Uri": checkpoints});
        r
    };
    let first = format!("xgb-parquet-{}", unique());
    let run = sm.train(&with_checkpoints(&first, 10), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Train matrix has 1000 rows and 3 columns"), "{run:?}");
    assert!(!run.stdout.contains("Resuming"), "nothing to resume from yet: {run:?}");
    // The newest five are kept, named as the algorithm names them.
    let kept = object_names(&bucket, &prefix);
    let expected: Vec<String> = (5..10).map(|n| format!("xgboost-checkpoint.{n}")).collect();
    assert_eq!(kept, expected, "{run:?}");
    let (_, rounds) = score(&bucket, &sm, &first, &held_out);
    assert_eq!(rounds, 10);

    // A second job on the same checkpoints resumes after round 9 instead of starting again.
    let second = format!("xgb-resumed-{}", unique());
    let run = sm.train(&with_checkpoints(&second, 40), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("Resuming from checkpoint /opt/ml/checkpoints/xgboost-checkpoint.9: 10 of 40 rounds done"),
        "{run:?}"
    );
    assert!(run.stdout.contains("[10]\ttrain-rmse:") && !run.stdout.contains("[9]\ttrain-rmse:"), "{run:?}");
    let expected: Vec<String> = (35..40).map(|n| format!("xgboost-checkpoint.{n}")).collect();
    assert_eq!(object_names(&bucket, &prefix), expected, "numbered by the model's rounds: {run:?}");
    let (rmse, rounds) = score(&bucket, &sm, &second, &held_out);
    assert!(rmse < 0.35 && rounds == 40, "resumed: RMSE {rmse} after {rounds} rounds: {run:?}");
}

/// The names of the objects under `prefix` in the bucket (s3s-fs keeps them as files),
/// in their checkpoints' order.
fn object_names(bucket: &Bucket, prefix: &str) -> Vec<String> {
    let folder = s3().root.join(&bucket.name).join(prefix);
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort_by_key(|n| n.rsplit('.').next().and_then(|r| r.parse::<u64>().ok()));
    names
}
