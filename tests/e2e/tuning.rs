//! Hyperparameter tuning jobs through `smlocal serve` and `smlocal tune`: the SageMaker SDK's
//! tuner unchanged, boto3's tuning calls, every strategy, early stopping, completion, stops
//! and warm starts, with real training jobs in Docker.

use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// A tuning job over the probe's `curve` (loss = x·(1 + 1/epoch)), objective `loss`
/// (Minimize), found by `regex`.
fn probe_tuning(
    name: &str,
    bucket: &Bucket,
    strategy: &str,
    steps: &str,
    ranges: Value,
    jobs: u32,
    parallel: u32,
) -> Value {
    bucket.put("train/data.txt", b"1");
    json!({
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges,
            "RandomSeed": 11
        },
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {
                "TrainingImage": PROBE_IMAGE,
                "TrainingInputMode": "File",
                // The platform shows the probe's tab as #011, and so does this regex.
                "MetricDefinitions": [{"Name": "loss", "Regex": "epoch=[0-9]+#011loss=([0-9.]+)"}]
            },
            "Environment": {"PROBE_STEPS": steps},
            "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
            "InputDataConfig": [{
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri("train/"), "S3DataDistributionType": "FullyReplicated"}}
            }],
            "OutputDataConfig": {"S3OutputPath": bucket.uri("output")},
            // 4 GiB each: three fit beside each other on the test machine.
            "ResourceConfig": {"InstanceType": "ml.t3.medium", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 300}
        }
    })
}

fn tuning_calls(sm: &Smlocal, server: &Server, args: &[&str]) -> Value {
    let run = python(sm, server, "tuning_calls.py", args);
    assert_eq!(run.code, 0, "tuning_calls.py {args:?}: {run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn create_and_wait(sm: &Smlocal, server: &Server, request: &Value) -> Value {
    let created = tuning_calls(sm, server, &["create", &request_file(sm, request)]);
    assert!(created["HyperParameterTuningJobArn"].is_string(), "{created}");
    tuning_calls(sm, server, &["wait", request["HyperParameterTuningJobName"].as_str().unwrap()])
}

/// Waits until `count` of the tuning job's training jobs are InProgress (`smlocal list`).
fn running(sm: &Smlocal, tuning_job: &str, count: usize) {
    wait_until(&format!("{count} training jobs of {tuning_job} running"), std::time::Duration::from_secs(60), || {
        let listed = sm.command().args(["list", "--name-contains", tuning_job]).output().unwrap();
        String::from_utf8_lossy(&listed.stdout).matches("InProgress").count() >= count
    });
}

fn tuned(summary: &Value, key: &str) -> String {
    summary["TunedHyperParameters"][key].as_str().unwrap_or_else(|| panic!("no {key}: {summary}")).to_string()
}

fn objective(summary: &Value) -> Option<f64> {
    summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64()
}

fn counters_add_up(d: &Value, jobs: u64) {
    let c = &d["TrainingJobStatusCounters"];
    let sum: u64 = ["Completed", "InProgress", "RetryableError", "NonRetryableError", "Stopped"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or_else(|| panic!("{k}: {c}")))
        .sum();
    assert_eq!(sum, jobs, "{c}");
    let o = &d["ObjectiveStatusCounters"];
    let sum: u64 = ["Succeeded", "Pending", "Failed"].iter().map(|k| o[k].as_u64().unwrap()).sum();
    assert_eq!(sum, jobs, "{o}");
    assert_eq!(c["InProgress"], 0, "{c}");
}

#[test]
fn the_sdk_s_tuner_runs_random_and_bayesian_searches_unchanged() {
    let sm = Smlocal::new();
    let server = sm.serve(&["--max-parallel", "2"]);
    let bucket = s3().bucket(&format!("tune-sdk-{}", unique()));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/linear");
    for channel in ["train", "validation"] {
        bucket.put(
            &format!("data/{channel}/part-0.csv"),
            &std::fs::read(fixtures.join(channel).join("data.csv")).unwrap(),
        );
    }
    for (strategy, jobs) in [("Random", 6), ("Bayesian", 8)] {
        let run = python(
            &sm,
            &server,
            "sdk_tune.py",
            &[&bucket.uri("data"), &bucket.uri("out"), strategy, &jobs.to_string(), "2", "7"],
        );
        assert_eq!(run.code, 0, "{strategy}: {run:?}");
        let line = run.stdout.lines().find_map(|l| l.strip_prefix("result=")).unwrap_or_default();
        let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        eprintln!("SDK {strategy} tuner, {jobs} jobs 2 at a time, through smlocal serve: {}s", r["seconds"]);
        assert_eq!(r["status"], "Completed", "{strategy}: {r}");
        assert_eq!(r["counters"]["Completed"], jobs, "{strategy}: {r}");
        assert_eq!(r["objective_counters"]["Succeeded"], jobs, "{strategy}: {r}");
        assert_eq!(r["ranges"]["ContinuousParameterRanges"][0]["ScalingType"], "Logarithmic", "{r}");
        let frame = r["frame"].as_array().unwrap();
        assert_eq!(frame.len(), jobs, "analytics().dataframe() has every job: {r}");
        let name = r["name"].as_str().unwrap();
        let mut below_a_hundredth = 0;
        for row in frame {
            let job = row["TrainingJobName"].as_str().unwrap();
            let suffix =
                job.strip_prefix(&format!("{name}-")).unwrap_or_else(|| panic!("{job} is not named after {name}"));
            let (number, hex) = suffix.split_once('-').unwrap();
            assert!(number.len() == 3 && number.parse::<u32>().is_ok(), "{job}");
            assert!(hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{job}");
            let lr = row["learning_rate"].as_f64().unwrap();
            let l2 = row["l2"].as_f64().unwrap();
            assert!((0.001..=0.1).contains(&lr) && (0.0..=0.05).contains(&l2), "{row}");
            assert!(["gd", "momentum"].contains(&row["optimizer"].as_str().unwrap()), "{row}");
            below_a_hundredth += usize::from(lr < 0.01);
            // The training job got the static and the tuned values, as strings.
            let hp = &r["hyperparameters"][job];
            assert_eq!(hp["epochs"], "20", "{hp}");
            let given: f64 = hp["learning_rate"].as_str().unwrap().parse().unwrap();
            assert!((given - lr).abs() <= 1e-12 * lr, "{hp} against {lr}");
        }
        // On a log scale half the draws fall below 0.01 (a linear one puts 9% there).
        assert!(below_a_hundredth >= 2, "{strategy}: learning_rate looks linear: {frame:?}");
        let best = frame
            .iter()
            .min_by(|a, b| {
                a["FinalObjectiveValue"].as_f64().unwrap().total_cmp(&b["FinalObjectiveValue"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(r["best"], best["TrainingJobName"], "{r}");
        assert_eq!(r["best_value"], best["FinalObjectiveValue"], "{r}");
    }
}

#[test]
fn grid_runs_exactly_the_grid_a_tabbed_line_matches_and_lists_sort_by_objective() {
    let sm = Smlocal::new();
    let server = sm.serve(&["--max-parallel", "3"]);
    let bucket = s3().bucket(&format!("tune-grid-{}", unique()));
    let name = format!("grid-{}", unique());
    let ranges = json!({
        "IntegerParameterRanges": [{"Name": "x", "MinValue": "1", "MaxValue": "3"}],
        "CategoricalParameterRanges": [{"Name": "tag", "Values": ["a", "b"]}]
    });
    let request = probe_tuning(&name, &bucket, "Grid", "on-term 0 curve x:3:0", ranges, 6, 3);
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    counters_add_up(&d, 6);
    assert_eq!(d["TrainingJobStatusCounters"]["Completed"], 6, "{d:#}");
    let jobs = d["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 6, "the paginator walks every page: {d:#}");
    let mut by_number: Vec<&Value> = jobs.iter().collect();
    by_number.sort_by_key(|j| j["TrainingJobName"].as_str().unwrap().to_string());
    let combos: Vec<String> = by_number.iter().map(|j| format!("{}{}", tuned(j, "x"), tuned(j, "tag"))).collect();
    assert_eq!(combos, ["1a", "1b", "2a", "2b", "3a", "3b"], "the grid, in order");
    for j in jobs {
        // loss at epoch 3 = x · 4/3, read from "epoch=3<tab>loss=…" through the #011 regex.
        let x: f64 = tuned(j, "x").parse().unwrap();
        let got = objective(j).unwrap_or_else(|| panic!("no objective: {j}"));
        assert!((got - x * 4.0 / 3.0).abs() < 1e-4, "{j}");
        assert_eq!(j["ObjectiveStatus"], "Succeeded");
    }
    let best = &d["BestTrainingJob"];
    assert_eq!(tuned(best, "x"), "1", "{best}");
    let order: Vec<String> = d["by_objective"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| tuned(jobs.iter().find(|j| &j["TrainingJobName"] == n).unwrap(), "x"))
        .collect();
    assert_eq!(order, ["1", "1", "2", "2", "3", "3"], "sorted by FinalObjectiveMetricValue");
    let listed = tuning_calls(&sm, &server, &["list"]);
    assert!(listed.as_array().unwrap().iter().any(|s| s["HyperParameterTuningJobName"] == name.as_str()), "{listed}");

    // A warm start from it: the parent's best is the overall best until a child beats it.
    let child = format!("warm-{}", unique());
    let mut warm = probe_tuning(
        &child,
        &bucket,
        "Random",
        "on-term 0 curve x:3:0",
        json!({
            "ContinuousParameterRanges": [{"Name": "x", "MinValue": "2", "MaxValue": "5"}],
            "CategoricalParameterRanges": [{"Name": "tag", "Values": ["a", "b"]}]
        }),
        2,
        2,
    );
    warm["WarmStartConfig"] = json!({"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": name}], "WarmStartType": "IdenticalDataAndAlgorithm"});
    let w = create_and_wait(&sm, &server, &warm);
    assert_eq!(w["HyperParameterTuningJobStatus"], "Completed", "{w:#}");
    assert_eq!(w["OverallBestTrainingJob"]["TrainingJobName"], best["TrainingJobName"], "{w:#}");
    assert_ne!(w["BestTrainingJob"]["TrainingJobName"], best["TrainingJobName"], "{w:#}");

    // Other data: IdenticalDataAndAlgorithm is refused, naming the parent; TransferLearning runs.
    bucket.put("train2/data.txt", b"2");
    let mut other = warm.clone();
    other["HyperParameterTuningJobName"] = json!(format!("other-{}", unique()));
    other["TrainingJobDefinition"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] =
        json!(bucket.uri("train2/"));
    let refused = tuning_calls(&sm, &server, &["create", &request_file(&sm, &other)]);
    assert_eq!(refused["error"], "ValidationException", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("IdenticalDataAndAlgorithm needs the same TrainingImage and InputDataConfig as the parent")
            && message.contains(&name),
        "{message}"
    );
    other["WarmStartConfig"]["WarmStartType"] = json!("TransferLearning");
    let t = create_and_wait(&sm, &server, &other);
    assert_eq!(t["HyperParameterTuningJobStatus"], "Completed", "{t:#}");
    assert_eq!(t["OverallBestTrainingJob"]["TrainingJobName"], best["TrainingJobName"], "{t:#}");
}

#[test]
fn a_tuning_job_whose_server_was_killed_is_failed_by_the_next_server() {
    let sm = Smlocal::new();
    let mut server = sm.serve(&[]);
    let bucket = s3().bucket(&format!("tune-kill-{}", unique()));
    let name = format!("kill-{}", unique());
    let ranges = json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "1", "MaxValue": "2"}]});
    let request = probe_tuning(&name, &bucket, "Random", "on-term 0 curve x:300:200", ranges, 2, 1);
    let created = tuning_calls(&sm, &server, &["create", &request_file(&sm, &request)]);
    assert!(created["HyperParameterTuningJobArn"].is_string(), "{created}");
    running(&sm, &name, 1);
    server.kill();
    let server = sm.serve(&[]);
    let d = tuning_calls(&sm, &server, &["wait", &name]);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Failed", "{d:#}");
    assert!(d["FailureReason"].as_str().unwrap_or_default().contains("ended before it did"), "{d:#}");
    let jobs = d["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{d:#}");
    let job = jobs[0]["TrainingJobName"].as_str().unwrap();
    assert_eq!(d["training_jobs"][job]["TrainingJobStatus"], "Failed", "the new server's cleanup ended it: {d:#}");
    assert_eq!(leftovers(job), (String::new(), String::new()), "{job} left containers or networks");
}

#[test]
fn early_stopping_stops_a_job_worse_than_the_median_and_a_silent_metric_says_why() {
    let sm = Smlocal::new();
    let server = sm.serve(&["--max-parallel", "2"]);
    let bucket = s3().bucket(&format!("tune-early-{}", unique()));
    let name = format!("early-{}", unique());
    let ranges = json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "1", "MaxValue": "10"}]});
    let mut request = probe_tuning(&name, &bucket, "Random", "on-term 0 curve x:10:300", ranges.clone(), 10, 2);
    request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = json!("Auto");
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    counters_add_up(&d, 10);
    let jobs = d["jobs"].as_array().unwrap();
    let stopped: Vec<&Value> = jobs.iter().filter(|j| j["TrainingJobStatus"] == "Stopped").collect();
    assert!(!stopped.is_empty(), "no job was stopped early: {d:#}");
    let best_x: f64 = tuned(&d["BestTrainingJob"], "x").parse().unwrap();
    for j in &stopped {
        let x: f64 = tuned(j, "x").parse().unwrap();
        assert!(x > best_x, "a stopped job was better than the best: {j}");
        // It ran fewer than its 10 epochs, and its objective is the last it reported.
        let job = &d["training_jobs"][j["TrainingJobName"].as_str().unwrap()];
        assert_eq!(job["TrainingJobStatus"], "Stopped", "{job}");
        assert!(
            job["TuningJobArn"].as_str().is_some_and(|a| a.ends_with(&format!("hyper-parameter-tuning-job/{name}"))),
            "{job}"
        );
        assert!(objective(j).is_some_and(|v| v > x * 1.1), "stopped before epoch 10: {j}");
    }
    eprintln!("early stopping stopped {} of 10 jobs", stopped.len());

    // A regex that matches nothing: the jobs complete, their objective fails, and the
    // summary says which line was likely meant.
    let silent = format!("silent-{}", unique());
    let mut request = probe_tuning(&silent, &bucket, "Random", "on-term 0 curve x:2:0", ranges, 2, 2);
    request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] =
        json!([{"Name": "loss", "Regex": "loss: ([0-9.]+)"}]);
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    assert_eq!(d["TrainingJobStatusCounters"]["Completed"], 2, "{d:#}");
    assert_eq!(d["ObjectiveStatusCounters"]["Failed"], 2, "{d:#}");
    assert!(d.get("BestTrainingJob").is_none(), "{d:#}");
    let reason = d["jobs"][0]["FailureReason"].as_str().unwrap_or_default();
    for words in ["The objective metric 'loss' was never reported", "regex 'loss: ([0-9.]+)'", "epoch=1#011loss="] {
        assert!(reason.contains(words), "{words}: {reason}");
    }
}

#[test]
fn hyperband_halves_the_jobs_and_a_stop_mid_way_leaves_nothing_running() {
    let sm = Smlocal::new();
    let server = sm.serve(&["--max-parallel", "3"]);
    let bucket = s3().bucket(&format!("tune-hb-{}", unique()));
    let name = format!("hb-{}", unique());
    let ranges = json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "1", "MaxValue": "10"}]});
    let mut request = probe_tuning(&name, &bucket, "Hyperband", "on-term 0 curve x:9:300", ranges.clone(), 9, 3);
    request["HyperParameterTuningJobConfig"]["StrategyConfig"] =
        json!({"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}});
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    counters_add_up(&d, 9);
    let jobs = d["jobs"].as_array().unwrap();
    let halved = jobs
        .iter()
        .filter(|j| {
            j["TrainingJobStatus"] == "Stopped"
                && objective(j).is_some_and(|v| v > 1.2 * tuned(j, "x").parse::<f64>().unwrap())
        })
        .count();
    assert!(halved >= 1, "Hyperband stopped no job before its budget: {d:#}");
    eprintln!("Hyperband stopped {halved} of 9 jobs before their 9 epochs");

    // Stopped while its first jobs run: every training job ends, no container is left.
    let long = format!("stop-{}", unique());
    let request = probe_tuning(&long, &bucket, "Random", "on-term 0 curve x:200:200", ranges, 4, 2);
    let created = tuning_calls(&sm, &server, &["create", &request_file(&sm, &request)]);
    assert!(created["HyperParameterTuningJobArn"].is_string(), "{created}");
    running(&sm, &long, 2);
    let d = tuning_calls(&sm, &server, &["stop", &long]);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Stopped", "{d:#}");
    assert_eq!(d["TrainingJobStatusCounters"]["InProgress"], 0, "{d:#}");
    let jobs = d["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "no job was launched after the stop: {d:#}");
    for j in jobs {
        let job = j["TrainingJobName"].as_str().unwrap();
        assert_eq!(j["TrainingJobStatus"], "Stopped", "{j}");
        assert_eq!(leftovers(job), (String::new(), String::new()), "{job} left containers or networks");
    }
}

#[test]
fn bad_requests_get_the_service_s_words_and_smlocal_tune_shows_a_table() {
    let sm = Smlocal::new();
    let server = sm.serve(&[]);
    let bucket = s3().bucket(&format!("tune-bad-{}", unique()));
    let ranges = json!({"ContinuousParameterRanges": [
        {"Name": "x", "MinValue": "0.1", "MaxValue": "1"},
        {"Name": "y", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"}
    ]});
    let mut request = probe_tuning(&format!("bad-{}", unique()), &bucket, "Grid", "curve x:1:0", ranges, 2, 1);
    request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] = json!("accuracy");
    let answer = tuning_calls(&sm, &server, &["create", &request_file(&sm, &request)]);
    assert_eq!(answer["error"], "ValidationException", "{answer}");
    let message = answer["message"].as_str().unwrap();
    for words in [
        "ContinuousParameterRanges cannot be used with it",
        "Logarithmic scaling works only for ranges that have only values greater than 0",
        "the objective metric 'accuracy' is not one of the metrics the training jobs report (loss)",
    ] {
        assert!(message.contains(words), "{words}: {message}");
    }
    let described = python(&sm, &server, "tuning_calls.py", &["wait", "never-made"]);
    assert!(described.stdout.contains("ResourceNotFound"), "{described:?}");

    // `smlocal tune` in the foreground: a line per change, the best job named at the end.
    let name = format!("cli-{}", unique());
    let ranges = json!({"CategoricalParameterRanges": [{"Name": "x", "Values": ["3", "1"]}]});
    let request = probe_tuning(&name, &bucket, "Grid", "on-term 0 curve x:2:0", ranges, 2, 2);
    let file = request_file(&sm, &request);
    let out = sm.command().args(["tune", &file]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("TRAINING JOB") && stdout.contains("OBJECTIVE"), "{stdout}");
    let best_line = stdout.lines().rfind(|l| l.starts_with('*')).unwrap_or_default();
    assert!(best_line.contains("Completed") && best_line.contains("x=1") && best_line.contains("1.5"), "{stdout}");
    assert!(stderr.contains(&format!("tuning job {name} Completed after 2 training jobs; best: {name}-")), "{stderr}");
    let names: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_start_matches(['*', ' ']).split(' ').next())
        .filter(|n| n.starts_with(&name))
        .collect();
    assert_eq!(names.len(), 2, "{stdout}");
}

#[test]
fn several_definitions_take_turns_and_completion_criteria_end_the_search() {
    let sm = Smlocal::new();
    let server = sm.serve(&["--max-parallel", "2"]);
    let bucket = s3().bucket(&format!("tune-defs-{}", unique()));
    let name = format!("defs-{}", unique());
    let mut request = probe_tuning(&name, &bucket, "Random", "on-term 0 curve x:2:0", json!({}), 4, 2);
    let config = request["HyperParameterTuningJobConfig"].as_object_mut().unwrap();
    let goal = config.remove("HyperParameterTuningJobObjective").unwrap();
    config.remove("ParameterRanges");
    let one = request.as_object_mut().unwrap().remove("TrainingJobDefinition").unwrap();
    let definition = |def: &str, lo: &str, hi: &str| {
        let mut d = one.clone();
        d["DefinitionName"] = json!(def);
        d["TuningObjective"] = goal.clone();
        d["HyperParameterRanges"] =
            json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": lo, "MaxValue": hi}]});
        d
    };
    request["TrainingJobDefinitions"] = json!([definition("low", "1", "2"), definition("high", "5", "6")]);
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    let jobs = d["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "{d:#}");
    for j in jobs {
        let x: f64 = tuned(j, "x").parse().unwrap();
        let expected = if x <= 2.0 { "low" } else { "high" };
        assert_eq!(j["TrainingJobDefinitionName"], expected, "each job in its definition's ranges: {j}");
    }
    let low = jobs.iter().filter(|j| j["TrainingJobDefinitionName"] == "low").count();
    assert_eq!(low, 2, "the definitions take turns: {d:#}");
    assert_eq!(d["BestTrainingJob"]["TrainingJobDefinitionName"], "low", "{d:#}");

    // TargetObjectiveMetricValue: the search ends once a job reaches it.
    let ranges = json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "1", "MaxValue": "10"}]});
    let target = format!("target-{}", unique());
    let mut request = probe_tuning(&target, &bucket, "Random", "on-term 0 curve x:1:0", ranges.clone(), 30, 1);
    request["HyperParameterTuningJobConfig"]["TuningJobCompletionCriteria"] =
        json!({"TargetObjectiveMetricValue": 6.0});
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    let jobs = d["jobs"].as_array().unwrap();
    let best = objective(&d["BestTrainingJob"]).unwrap();
    assert!(best <= 6.0 && jobs.len() < 30, "{} jobs, best {best}", jobs.len());
    // Only the last job reached it: the search stopped right there.
    let reached = jobs.iter().filter(|j| objective(j).is_some_and(|v| v <= 6.0)).count();
    assert_eq!(reached, 1, "{d:#}");

    // BestObjectiveNotImproving: three jobs in a row (the least botocore allows) no better
    // than the best end it.
    let flat = format!("flat-{}", unique());
    let mut request = probe_tuning(&flat, &bucket, "Random", "on-term 0 curve x:1:0", ranges, 30, 1);
    request["HyperParameterTuningJobConfig"]["TuningJobCompletionCriteria"] =
        json!({"BestObjectiveNotImproving": {"MaxNumberOfTrainingJobsNotImproving": 3}});
    let d = create_and_wait(&sm, &server, &request);
    assert_eq!(d["HyperParameterTuningJobStatus"], "Completed", "{d:#}");
    assert_eq!(d["TuningJobCompletionDetails"]["NumberOfTrainingJobsObjectiveNotImproving"], 3, "{d:#}");
    let mut jobs: Vec<&Value> = d["jobs"].as_array().unwrap().iter().collect();
    jobs.sort_by_key(|j| j["TrainingJobName"].as_str().unwrap().to_string());
    let values: Vec<f64> = jobs.iter().map(|j| objective(j).unwrap()).collect();
    let best_before = values[..values.len() - 3].iter().copied().fold(f64::INFINITY, f64::min);
    assert!(values[values.len() - 3..].iter().all(|&v| v >= best_before), "{values:?}");
}
