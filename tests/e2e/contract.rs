//! The sample job end to end, and what an algorithm sees inside its container (DESIGN §4).

use crate::harness::*;
use serde_json::{Value, json};

#[test]
fn the_sample_algorithm_trains_from_s3_and_its_model_lands_where_sagemaker_puts_it() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("sample-{}", unique()));
    let req = sample_request("sample-job", &bucket, 150);

    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("algo-1 | epoch=150 train_mse="), "{run:?}");
    assert!(run.stderr.contains("sample-job Completed"), "{run:?}");
    assert!(run.stderr.contains(&bucket.uri("output/sample-job/output/model.tar.gz")), "{run:?}");

    let model = bucket.get("output/sample-job/output/model.tar.gz").expect("model.tar.gz uploaded");
    let entries = tar_entries(&model);
    let model: Value = serde_json::from_slice(&file_entry(&entries, "model.json")).unwrap();
    let w: Vec<f64> = model["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(
        (w[0] - 3.0).abs() < 0.2 && (w[1] + 2.0).abs() < 0.2,
        "the fixture's y = 3a - 2b + 0.5 was not learned: {model}"
    );
    let output = tar_entries(&bucket.get("output/sample-job/output/output.tar.gz").expect("output.tar.gz uploaded"));
    assert!(String::from_utf8(file_entry(&output, "summary-algo-1.txt")).unwrap().contains("rows=200"));

    let record = sm.describe("sample-job");
    assert_eq!(record["TrainingJobStatus"], "Completed");
    assert_eq!(record["ModelArtifacts"]["S3ModelArtifacts"], bucket.uri("output/sample-job/output/model.tar.gz"));
    assert_eq!(record["HyperParameters"]["epochs"], "150");
    assert_eq!(record["TrainingJobArn"], "arn:aws:sagemaker:us-west-2:123456789012:training-job/sample-job");
    let statuses = statuses(&record);
    assert_eq!(statuses, ["Starting", "Downloading", "Training", "Uploading", "Completed"]);
    assert!(
        record["SecondaryStatusTransitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["StatusMessage"].is_string() && t["EndTime"].is_number())
    );

    let log = std::fs::read_to_string(sm.job_dir("sample-job").join("logs/algo-1.log")).unwrap();
    assert!(log.contains("epoch=150 train_mse="));
    let list = sm.command().arg("list").output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("sample-job"));
    assert_eq!(leftovers("sample-job"), (String::new(), String::new()));
    assert_eq!(leftover_volumes("sample-job"), "", "the overlay volumes must be removed too");
}

#[test]
fn config_files_environment_and_arguments_follow_the_contract() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("contract-{}", unique()));
    bucket.put("train/a.csv", b"1,2\n");
    bucket.put("extra/b.csv", b"3,4\n");
    let mut req = probe_request(
        "contract-job",
        &bucket,
        &["copy", "/opt/ml/input/config", "/opt/ml/model/config", "args", "env"],
    );
    // The SDK JSON-encodes values; they must reach the container untouched.
    req["HyperParameters"] =
        json!({"sagemaker_program": "\"train.py\"", "lr": "0.001", "text": "ünïcode \\ \"quoted\" {}"});
    req["Environment"] = json!({"MY_SETTING": "on", "OTHER": "x=y"});
    req["InputDataConfig"][0]["ContentType"] = json!("text/csv");
    req["InputDataConfig"].as_array_mut().unwrap().push(json!({
        "ChannelName": "extra",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri("extra"), "S3DataDistributionType": "ShardedByS3Key"}}
    }));
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");

    let entries = tar_entries(&bucket.get("output/contract-job/output/model.tar.gz").unwrap());
    let hp: Value = serde_json::from_slice(&file_entry(&entries, "config/hyperparameters.json")).unwrap();
    assert_eq!(hp, req["HyperParameters"]);
    let rc: Value = serde_json::from_slice(&file_entry(&entries, "config/resourceconfig.json")).unwrap();
    assert_eq!(
        rc,
        json!({
            "current_host": "algo-1", "current_instance_type": "ml.m5.large", "current_group_name": "homogeneousCluster",
            "hosts": ["algo-1"],
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.large", "hosts": ["algo-1"]}],
            "network_interface_name": "eth0"
        })
    );
    let idc: Value = serde_json::from_slice(&file_entry(&entries, "config/inputdataconfig.json")).unwrap();
    assert_eq!(
        idc,
        json!({
            "train": {"ContentType": "text/csv", "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
            "extra": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key", "RecordWrapperType": "None"}
        })
    );

    let lines: Vec<&str> = run.stdout.lines().filter_map(|l| l.strip_prefix("algo-1 | ")).collect();
    assert!(
        lines
            .contains(&r#"["/usr/local/bin/probe","copy","/opt/ml/input/config","/opt/ml/model/config","args","env"]"#),
        "{run:?}"
    );
    for expected in [
        "TRAINING_JOB_NAME=contract-job",
        "TRAINING_JOB_ARN=arn:aws:sagemaker:us-west-2:123456789012:training-job/contract-job",
        "AWS_REGION=us-west-2",
        "MY_SETTING=on",
        "OTHER=x=y",
        "HOSTNAME=algo-1",
    ] {
        assert!(lines.contains(&expected), "{expected} missing from the container's environment: {run:?}");
    }
    assert!(
        !run.stdout.contains("AWS_ACCESS_KEY_ID") && !run.stdout.contains(SECRET_KEY),
        "credentials leaked into the container: {run:?}"
    );
}

#[test]
fn credentials_reach_the_container_only_when_asked() {
    let (sm, bucket) = with_data("creds");
    let run = sm.train(&probe_request("creds-job", &bucket, &["env"]), &["--pass-aws-credentials"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&format!("algo-1 | AWS_ACCESS_KEY_ID={ACCESS_KEY}")), "{run:?}");
    assert!(run.stdout.contains(&format!("algo-1 | AWS_SECRET_ACCESS_KEY={SECRET_KEY}")), "{run:?}");
    // The test S3 server listens on 127.0.0.1, which is the container itself in there: the
    // container gets a relay on its network's gateway instead, under both names.
    let endpoint =
        |name: &str| run.stdout.lines().find_map(|l| l.strip_prefix(&format!("algo-1 | {name}="))).map(str::to_string);
    let relayed = endpoint("AWS_ENDPOINT_URL_S3").expect("AWS_ENDPOINT_URL_S3");
    assert!(relayed.starts_with("http://") && !relayed.contains("127.0.0.1"), "{relayed}");
    assert_eq!(endpoint("S3_ENDPOINT_URL"), Some(relayed));

    let run = sm.train(&probe_request("no-creds-job", &bucket, &["env"]), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL"] {
        assert!(!run.stdout.contains(&format!("| {name}=")), "{name} reached the container: {run:?}");
    }
    // Nor can an AWS SDK in there fall back on this machine's instance role.
    assert!(run.stdout.contains("algo-1 | AWS_EC2_METADATA_DISABLED=true"), "{run:?}");
}

#[test]
fn the_image_entrypoint_gets_train_and_container_arguments_replace_it() {
    let (sm, bucket) = with_data("args");
    let plain = request("args-train", PROBE_IMAGE, &bucket);
    let run = sm.train(&plain, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut with_args = request("args-custom", PROBE_IMAGE, &bucket);
    with_args["AlgorithmSpecification"]["ContainerArguments"] = json!(["echo", "custom-arguments", "args"]);
    let run = sm.train(&with_args, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(r#"algo-1 | ["/usr/local/bin/probe","echo","custom-arguments","args"]"#), "{run:?}");
}

#[test]
fn containers_are_capped_by_the_instance_type_and_isolation_cuts_the_network() {
    let (sm, bucket) = with_data("caps");
    // Isolated, one host still resolves its own name and has the eth0 resourceconfig.json names.
    let steps = ["resolve", "algo-1", "only-if-missing", "/sys/class/net/eth0", "exit", "4", "all", "echo", "ok"];
    let mut req = probe_request("caps-job", &bucket, &steps);
    req["ResourceConfig"]["InstanceType"] = json!("ml.t3.medium");
    req["EnableNetworkIsolation"] = json!(true);
    let run = sm.train(&req, &["--keep"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (containers, _) = leftovers("caps-job");
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.Privileged}} {{.Config.Hostname}} {{.HostConfig.NetworkMode}}"])
        .arg(containers.split_whitespace().next().expect("--keep leaves the container"))
        .output()
        .unwrap();
    let inspected = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let (caps, network) = inspected.rsplit_once(' ').unwrap();
    let internal = std::process::Command::new("docker")
        .args(["network", "inspect", "--format", "{{.Internal}}", network])
        .output()
        .unwrap();
    remove_leftovers("caps-job");
    let cpus = std::thread::available_parallelism().unwrap().get().min(2);
    let four_gib = 4u64 << 30;
    assert_eq!(caps, format!("{four_gib} {four_gib} {} false algo-1", cpus * 1_000_000_000));
    assert!(network.starts_with("smlocal-caps-job"), "a network of the job's own: {network}");
    assert_eq!(String::from_utf8_lossy(&internal.stdout).trim(), "true", "no way out of the job's network");
    assert!(run.stdout.contains("resolved algo-1"), "{run:?}");
    assert!(run.stderr.contains("algo-1 is ml.t3.medium with"), "{run:?}");
}

#[test]
fn a_relayed_job_has_a_network_of_its_own_so_no_other_container_shares_its_relay() {
    let (sm, bucket) = with_data("relay-net");
    let run = sm.train(&probe_request("relay-net-job", &bucket, &["env"]), &["--pass-aws-credentials"]);
    assert_eq!(run.code, 0, "{run:?}");
    let relayed = run.stdout.lines().find_map(|l| l.strip_prefix("algo-1 | AWS_ENDPOINT_URL_S3=")).expect("relay");
    let relay_ip = relayed.trim_start_matches("http://").rsplit_once(':').map(|(ip, _)| ip.to_string()).unwrap();
    let out = std::process::Command::new("docker")
        .args(["network", "inspect", "bridge", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"])
        .output()
        .unwrap();
    let bridge = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(bridge.contains('/'), "the default bridge has no subnet to compare with: {out:?}");
    // 172.17.0.0/16 → "172.17.": the relay is not on the default bridge, where every other
    // container of this machine is.
    let prefix: String = bridge.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    assert!(!relay_ip.starts_with(&prefix), "the relay {relay_ip} listens on the default bridge ({bridge})");
}

#[test]
fn the_platforms_other_files_and_folders_are_there_when_the_request_sets_them() {
    let (sm, bucket) = with_data("platform");
    bucket.put("train/b.csv", b"2\n");
    let mut steps = vec![];
    for file in ["checkpointconfig.json", "debughookconfig.json", "profilerconfig.json", "trainingjobconfig.json"] {
        steps.extend(["cat".to_string(), format!("/opt/ml/input/config/{file}")]);
    }
    steps.extend(["cat", "/opt/ml/input/data/train-manifest"].map(String::from));
    for folder in ["output/data", "output/profiler", "output/metrics/sagemaker", "output/tensors", "checkpoints"] {
        steps.extend(["only-if-missing", &format!("/opt/ml/{folder}"), "exit", "5", "all"].map(String::from));
    }
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let mut request = probe_request("platform-job", &bucket, &steps);
    request["CheckpointConfig"] = json!({"S3Uri": bucket.uri("ckpt")});
    request["DebugHookConfig"] = json!({"S3OutputPath": bucket.uri("debug")});
    request["ProfilerConfig"] = json!({"S3OutputPath": bucket.uri("profiler")});
    let run = sm.train(&request, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    // (The probe cats the files back to back, as written: compact JSON, no final newline.)
    assert!(out.contains(r#"{"LocalPath":"/opt/ml/checkpoints","S3Uri":"#), "{out}");
    assert!(out.contains(&format!(r#"{{"S3OutputPath":"{}"}}"#, bucket.uri("debug"))), "{out}");
    assert!(out.contains(&format!(r#"{{"S3OutputPath":"{}"}}"#, bucket.uri("profiler"))), "{out}");
    assert!(
        out.contains(r#""TrainingJobArn":"arn:aws:sagemaker:us-west-2:123456789012:training-job/platform-job""#),
        "{out}"
    );
    let manifest = format!(
        "{}\nalgo-1 | {}\nalgo-1 | {}\n",
        bucket.uri("train/"),
        bucket.uri("train/a.csv"),
        bucket.uri("train/b.csv")
    );
    assert!(out.contains(&manifest), "the channel's manifest: its prefix, then its objects: {out}");
}
