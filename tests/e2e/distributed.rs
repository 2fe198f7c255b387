//! Several hosts: sharding by key, per-host folders merged, peers by name, the first failure
//! stopping the rest, the stopping contract on every host, isolation and oversubscription.

use crate::harness::*;
use serde_json::{Value, json};
use smlocal::{StagedObject, shard};
use std::process::Command;
use std::time::{Duration, Instant};

fn cluster(req: &mut Value, count: u32) {
    // 4 GiB each, so several fit this machine.
    req["ResourceConfig"] = json!({"InstanceType": "ml.t3.medium", "InstanceCount": count, "VolumeSizeInGB": 1});
}

fn names(entries: &[(String, Entry)], under: &str) -> Vec<String> {
    let mut found: Vec<String> = entries
        .iter()
        .filter(|(p, e)| matches!(e, Entry::File(_)) && p.starts_with(under))
        .map(|(p, _)| p[under.len()..].to_string())
        .collect();
    found.sort();
    found
}

#[test]
fn sharded_keys_follow_the_documented_rule_and_host_folders_are_merged() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("shard-{}", unique()));
    let keys: Vec<String> = (0..7).map(|i| format!("part-{i}.csv")).collect();
    for k in &keys {
        bucket.put(&format!("train/{k}"), k.as_bytes());
        bucket.put(&format!("shuffled/{k}"), k.as_bytes());
    }
    bucket.put("all/x.csv", b"x");
    bucket.put("all/y.csv", b"y");
    let steps = [
        "copy",
        "/opt/ml/input/data/train",
        "/opt/ml/model/{host}/train",
        "copy",
        "/opt/ml/input/data/shuffled",
        "/opt/ml/model/{host}/shuffled",
        "copy",
        "/opt/ml/input/data/all",
        "/opt/ml/model/{host}/all",
        "copy",
        "/opt/ml/input/config/resourceconfig.json",
        "/opt/ml/model/{host}/resourceconfig.json",
        "write",
        "/opt/ml/model/same.txt",
        "identical on every host",
        "write",
        "/opt/ml/model/clash.txt",
        "written by {host}",
        "write",
        "/opt/ml/output/data/{host}.txt",
        "{host}",
    ];
    let mut req = probe_request("shard-job", &bucket, &steps);
    cluster(&mut req, 3);
    let channel = |name: &str, prefix: &str, dist: &str| json!({"ChannelName": name, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri(prefix), "S3DataDistributionType": dist}}});
    let mut shuffled = channel("shuffled", "shuffled/", "ShardedByS3Key");
    shuffled["ShuffleConfig"] = json!({"Seed": 1234});
    req["InputDataConfig"] =
        json!([channel("train", "train/", "ShardedByS3Key"), shuffled, channel("all", "all/", "FullyReplicated")]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");

    let model = tar_entries(&bucket.get("output/shard-job/output/model.tar.gz").unwrap());
    // Sorted keys, object i to host (i mod 3) + 1.
    assert_eq!(names(&model, "algo-1/train/"), ["part-0.csv", "part-3.csv", "part-6.csv"]);
    assert_eq!(names(&model, "algo-2/train/"), ["part-1.csv", "part-4.csv"]);
    assert_eq!(names(&model, "algo-3/train/"), ["part-2.csv", "part-5.csv"]);
    // With a seed, the same rule after the documented shuffle: predictable from the library.
    let objects: Vec<StagedObject> = keys
        .iter()
        .map(|k| StagedObject { uri: bucket.uri(&format!("shuffled/{k}")), relative: k.into(), info: None })
        .collect();
    let predicted = shard(objects, 3, Some(1234));
    for (i, share) in predicted.iter().enumerate() {
        let mut expected: Vec<String> = share.iter().map(|o| o.relative.display().to_string()).collect();
        expected.sort();
        assert_eq!(names(&model, &format!("algo-{}/shuffled/", i + 1)), expected);
    }
    for host in ["algo-1", "algo-2", "algo-3"] {
        assert_eq!(names(&model, &format!("{host}/all/")), ["x.csv", "y.csv"], "FullyReplicated reaches {host}");
        let rc: Value = serde_json::from_slice(&file_entry(&model, &format!("{host}/resourceconfig.json"))).unwrap();
        assert_eq!(rc["current_host"], host);
        assert_eq!(rc["hosts"], json!(["algo-1", "algo-2", "algo-3"]));
        assert_eq!(rc["instance_groups"][0]["hosts"], json!(["algo-1", "algo-2", "algo-3"]));
    }
    assert_eq!(file_entry(&model, "same.txt"), b"identical on every host");
    assert_eq!(file_entry(&model, "clash.txt"), b"written by algo-1");
    assert!(
        run.stderr.contains("hosts algo-1, algo-2, algo-3 wrote 'clash.txt' with different contents"),
        "the conflict must be named with its hosts: {run:?}"
    );
    assert!(!run.stderr.contains("same.txt"), "{run:?}");
    let output = tar_entries(&bucket.get("output/shard-job/output/output.tar.gz").unwrap());
    for host in ["algo-1", "algo-2", "algo-3"] {
        assert_eq!(file_entry(&output, &format!("{host}.txt")), host.as_bytes());
        assert!(sm.job_dir("shard-job").join(format!("logs/{host}.log")).exists());
    }
    assert_eq!(leftovers("shard-job"), (String::new(), String::new()));
}

#[test]
fn instance_groups_get_their_own_channels_and_resource_config() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("groups-{}", unique()));
    bucket.put("train/a.csv", b"a");
    let steps = ["copy", "/opt/ml/input", "/opt/ml/model/{host}"];
    let mut req = probe_request("groups-job", &bucket, &steps);
    req["ResourceConfig"] = json!({"InstanceGroups": [
        {"InstanceGroupName": "driver", "InstanceType": "ml.m5.large", "InstanceCount": 1},
        {"InstanceGroupName": "workers", "InstanceType": "ml.t3.medium", "InstanceCount": 2}
    ], "VolumeSizeInGB": 1});
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["InstanceGroupNames"] = json!(["workers"]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let model = tar_entries(&bucket.get("output/groups-job/output/model.tar.gz").unwrap());
    let rc: Value = serde_json::from_slice(&file_entry(&model, "algo-2/config/resourceconfig.json")).unwrap();
    assert_eq!(rc["current_group_name"], "workers");
    assert_eq!(rc["current_instance_type"], "ml.t3.medium");
    assert_eq!(
        rc["instance_groups"],
        json!([
            {"instance_group_name": "driver", "instance_type": "ml.m5.large", "hosts": ["algo-1"]},
            {"instance_group_name": "workers", "instance_type": "ml.t3.medium", "hosts": ["algo-2", "algo-3"]}
        ])
    );
    assert!(names(&model, "algo-1/data/").is_empty(), "the driver group does not get the workers' channel");
    // The channel and its manifest, as SageMaker gives a host each channel it receives.
    assert_eq!(names(&model, "algo-3/data/"), ["train-manifest", "train/a.csv"]);
    let idc: Value = serde_json::from_slice(&file_entry(&model, "algo-1/config/inputdataconfig.json")).unwrap();
    assert_eq!(idc, json!({}));
}

#[test]
fn the_sample_trains_data_parallel_over_the_network_by_host_name() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("parallel-{}", unique()));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/linear/train/data.csv");
    let text = std::fs::read_to_string(fixtures).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, part) in lines.chunks(50).enumerate() {
        bucket.put(&format!("train/part-{i}.csv"), format!("{}\n", part.join("\n")).as_bytes());
    }
    let mut req = request("parallel-job", SAMPLE_IMAGE, &bucket);
    cluster(&mut req, 2);
    req["HyperParameters"] = json!({"epochs": "150", "learning_rate": "0.1"});
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] = json!("ShardedByS3Key");
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("algo-2 | algo-2 connected to algo-1"), "{run:?}");
    assert!(
        run.stdout.contains("algo-1 | loaded 100 training rows")
            && run.stdout.contains("algo-2 | loaded 100 training rows"),
        "{run:?}"
    );
    let model = tar_entries(&bucket.get("output/parallel-job/output/model.tar.gz").unwrap());
    let model: Value = serde_json::from_slice(&file_entry(&model, "model.json")).unwrap();
    let w: Vec<f64> = model["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!((w[0] - 3.0).abs() < 0.2 && (w[1] + 2.0).abs() < 0.2, "{model}");
    assert_eq!(model["trained_on"], "algo-1");
    let output = tar_entries(&bucket.get("output/parallel-job/output/output.tar.gz").unwrap());
    assert!(String::from_utf8(file_entry(&output, "summary-algo-2.txt")).unwrap().contains("rows=100"));
}

#[test]
fn the_first_failing_host_stops_the_others_and_is_named() {
    let (sm, bucket) = with_data("hostfail");
    let steps = [
        "on-term",
        "0",
        "only",
        "algo-2",
        "sleep",
        "1",
        "write",
        "/opt/ml/output/failure",
        "broken on purpose",
        "exit",
        "5",
        "all",
        "sleep",
        "60",
    ];
    let mut req = probe_request("hostfail-job", &bucket, &steps);
    cluster(&mut req, 3);
    let started = Instant::now();
    let run = sm.train(&req, &["--stop-grace", "30"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the others handle SIGTERM; no grace should be spent: {run:?}"
    );
    for host in ["algo-1", "algo-3"] {
        assert!(run.stdout.contains(&format!("{host} | probe: SIGTERM")), "{host} was not stopped: {run:?}");
    }
    let record = sm.describe("hostfail-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    assert_eq!(record["FailureReason"], "AlgorithmError: algo-2: broken on purpose");
    assert_eq!(leftovers("hostfail-job"), (String::new(), String::new()));
}

#[test]
fn max_runtime_stops_every_host_sigkilling_the_one_that_ignores_sigterm() {
    let (sm, bucket) = with_data("cluster-runtime");
    // algo-1 handles SIGTERM; algo-2 ignores it, so only SIGKILL after the grace ends it.
    let steps = ["only", "algo-1", "on-term", "0", "all", "echo", "up", "sleep", "60"];
    let mut req = probe_request("cluster-runtime-job", &bucket, &steps);
    cluster(&mut req, 2);
    req["StoppingCondition"]["MaxRuntimeInSeconds"] = json!(2);
    let started = Instant::now();
    let run = sm.train(&req, &["--stop-grace", "3"]);
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(20), "2 s runtime + 3 s grace, took {took:?}");
    assert!(
        run.stdout.contains("algo-1 | probe: SIGTERM") && !run.stdout.contains("algo-2 | probe: SIGTERM"),
        "{run:?}"
    );
    let record = sm.describe("cluster-runtime-job");
    assert_eq!(
        (record["TrainingJobStatus"].as_str(), record["SecondaryStatus"].as_str()),
        (Some("Stopped"), Some("MaxRuntimeExceeded"))
    );
    let output = tar_entries(&bucket.get("output/cluster-runtime-job/output/output.tar.gz").unwrap());
    assert_eq!(file_entry(&output, "sigterm"), b"terminated\n");
    assert_eq!(leftovers("cluster-runtime-job"), (String::new(), String::new()));
}

#[test]
fn smlocal_stop_from_another_process_goes_through_stopping_to_stopped() {
    let (sm, bucket) = with_data("stopcmd");
    // Ignores SIGTERM, so the job stays in Stopping for the whole grace period.
    let mut req = probe_request("stopcmd-job", &bucket, &["echo", "ready", "sleep", "60"]);
    cluster(&mut req, 2);
    let (mut child, mut lines) = sm.spawn_train(&req, &["--stop-grace", "3"]);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.ends_with("| ready")));

    let stop = Run::from(sm.command().args(["stop", "stopcmd-job"]).output().unwrap());
    assert_eq!(stop.code, 0, "{stop:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut saw_stopping = false;
    while Instant::now() < deadline && !saw_stopping {
        saw_stopping = sm.describe("stopcmd-job")["TrainingJobStatus"] == "Stopping";
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_stopping, "the record never showed Stopping");
    let _rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert_eq!(sm.describe("stopcmd-job")["TrainingJobStatus"], "Stopped");
    let again = Run::from(sm.command().args(["stop", "stopcmd-job"]).output().unwrap());
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("already Stopped"), "{again:?}");
    assert_eq!(leftovers("stopcmd-job"), (String::new(), String::new()));
}

#[test]
fn ctrl_c_on_a_cluster_stops_every_host_and_leaves_nothing_behind() {
    let (sm, bucket) = with_data("cluster-sigint");
    let mut req = probe_request("cluster-sigint-job", &bucket, &["on-term", "0", "echo", "ready", "sleep", "60"]);
    cluster(&mut req, 3);
    let (mut child, mut lines) = sm.spawn_train(&req, &[]);
    let mut ready = 0;
    for line in lines.by_ref().map_while(Result::ok) {
        ready += usize::from(line.ends_with("| ready"));
        if ready == 3 {
            break;
        }
    }
    assert_eq!(ready, 3);
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    for host in ["algo-1", "algo-2", "algo-3"] {
        assert!(rest.contains(&format!("{host} | probe: SIGTERM")), "{host}: {rest:?}");
    }
    assert_eq!(sm.describe("cluster-sigint-job")["TrainingJobStatus"], "Stopped");
    assert_eq!(leftovers("cluster-sigint-job"), (String::new(), String::new()));
}

#[test]
fn network_isolation_lets_peers_talk_and_every_network_is_internal() {
    let (sm, bucket) = with_data("isolated");
    let steps = [
        "resolve",
        "algo-1",
        "resolve",
        "algo-2",
        "only",
        "algo-2",
        "listen",
        "9000",
        "only",
        "algo-1",
        "send",
        "algo-2",
        "9000",
        "hello from algo-1",
    ];
    let mut req = probe_request("isolated-job", &bucket, &steps);
    cluster(&mut req, 2);
    req["EnableNetworkIsolation"] = json!(true);
    let run = sm.train(&req, &["--keep"]);
    let (containers, _) = leftovers("isolated-job");
    let mut internal = Vec::new();
    for id in containers.split_whitespace() {
        let nets = Command::new("docker")
            .args(["inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", id])
            .output()
            .unwrap();
        for net in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
            let out =
                Command::new("docker").args(["network", "inspect", "--format", "{{.Internal}}", net]).output().unwrap();
            internal.push((net.to_string(), String::from_utf8_lossy(&out.stdout).trim().to_string()));
        }
    }
    remove_leftovers("isolated-job");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("algo-1 | resolved algo-2") && run.stdout.contains("algo-2 | resolved algo-1"),
        "{run:?}"
    );
    assert!(run.stdout.contains("algo-2 | probe: got hello from algo-1"), "{run:?}");
    assert_eq!(internal.len(), 2, "each container joins exactly the job's network: {internal:?}");
    assert!(
        internal.iter().all(|(_, i)| i == "true"),
        "every network a job container joins must be internal: {internal:?}"
    );
}

#[test]
fn a_cluster_too_big_for_this_machine_is_refused_unless_oversubscribed() {
    let (sm, bucket) = with_data("oversub");
    let mut req = probe_request("oversub-job", &bucket, &["echo", "ran"]);
    req["ResourceConfig"] = json!({"InstanceType": "ml.m5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 1});
    let refused = sm.train(&req, &[]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("384.0 GiB of memory (2 × ml.m5.12xlarge at 192.0 GiB)")
            && refused.stderr.contains("--oversubscribe"),
        "{refused:?}"
    );
    assert!(!sm.job_dir("oversub-job").exists(), "nothing may start or be recorded");
    let run = sm.train(&req, &["--oversubscribe"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("every container's memory cap is scaled to")
            && run.stderr.contains("(scaled down from 192.0 GiB)"),
        "{run:?}"
    );
    assert_eq!(run.stdout.matches("| ran").count(), 2);
}
