//! Pipe mode (DESIGN §13): a FIFO per channel and epoch, fed while the algorithm reads it;
//! the per-epoch shuffle and shard, RecordIO read by an independent reader (and the SageMaker
//! SDK's), gzip, augmented manifests, early closes, readers that never open, and FastFile's
//! read-only folders.

use crate::harness::*;
use serde_json::{Value, json};
use smlocal::{StagedObject, shard};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

fn pipe_channel(name: &str, uri: &str, data_type: &str) -> Value {
    json!({"ChannelName": name, "InputMode": "Pipe",
           "DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}})
}

fn pipe_request(name: &str, bucket: &Bucket, steps: &[&str], channels: Vec<Value>) -> Value {
    let mut req = probe_request(name, bucket, steps);
    req["AlgorithmSpecification"]["TrainingInputMode"] = json!("Pipe");
    req["InputDataConfig"] = json!(channels);
    req
}

/// A file of the model, by its path in `model.tar.gz`.
fn model_file(bucket: &Bucket, job: &str, path: &str) -> Vec<u8> {
    let model = tar_entries(&bucket.get(&format!("output/{job}/output/model.tar.gz")).expect("model.tar.gz"));
    file_entry(&model, path)
}

/// Parses RecordIO bytes with the tests' Python reader (and the SageMaker SDK's).
fn read_recordio(bytes_file: &std::path::Path) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python/recordio_read.py");
    let out = Command::new(sdk_python())
        .arg(&script)
        .arg(bytes_file)
        .env("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
        .output()
        .expect("run python");
    assert!(out.status.success(), "recordio_read.py: {}", String::from_utf8_lossy(&out.stderr));
    // The SDK prints its own notes on stdout; the records are the last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<Vec<Value>>(stdout.lines().last().unwrap_or_default()).expect("JSON")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn two_epochs_of_a_sharded_shuffled_channel_follow_the_rule_on_every_host() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pipe-shard-{}", unique()));
    let keys: Vec<String> = (0..11).map(|i| format!("part-{i:02}.rec")).collect();
    let content = |k: &str| format!("<{k}:{}>", "x".repeat(k.len() * 3));
    for k in &keys {
        bucket.put(&format!("train/{k}"), content(k).as_bytes());
    }
    bucket.put("val/b.txt", b"bravo;");
    bucket.put("val/a.txt", b"alpha;");
    let steps = [
        "exists",
        "/opt/ml/input/data/train_1",
        "pipe",
        "train",
        "2",
        "/opt/ml/model/{host}",
        "exists",
        "/opt/ml/input/data/train_2",
        "exists",
        "/opt/ml/input/data/train_3",
        "pipe",
        "val",
        "1",
        "/opt/ml/model/{host}",
        "copy",
        "/opt/ml/input/config/inputdataconfig.json",
        "/opt/ml/model/{host}/inputdataconfig.json",
    ];
    let mut train = pipe_channel("train", &bucket.uri("train/"), "S3Prefix");
    train["DataSource"]["S3DataSource"]["S3DataDistributionType"] = json!("ShardedByS3Key");
    train["ShuffleConfig"] = json!({"Seed": 99});
    let mut req = pipe_request(
        "pipe-shard-job",
        &bucket,
        &steps,
        vec![train, pipe_channel("val", &bucket.uri("val/"), "S3Prefix")],
    );
    req["ResourceConfig"] = json!({"InstanceType": "ml.t3.medium", "InstanceCount": 3, "VolumeSizeInGB": 1});
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // `_1` does not exist before `_0` is opened (it is made then), `_2` does once `_1` was
    // opened, and `_3` never: epochs are made one at a time.
    for host in ["algo-1", "algo-2", "algo-3"] {
        for (fifo, there) in [("train_1", false), ("train_2", true), ("train_3", false)] {
            assert!(
                run.stdout.contains(&format!("{host} | exists /opt/ml/input/data/{fifo}={there}")),
                "{fifo} on {host}: {run:?}"
            );
        }
    }
    let objects: Vec<StagedObject> = keys
        .iter()
        .map(|k| StagedObject { uri: bucket.uri(&format!("train/{k}")), relative: k.into(), info: None })
        .collect();
    let mut epochs_of_host_1 = Vec::new();
    for epoch in 0..2u64 {
        // README's rule: epoch N is File mode's rule with the seed S + N.
        let predicted = shard(objects.clone(), 3, Some(99 + epoch as i64));
        let mut seen = 0;
        for (h, share) in predicted.iter().enumerate() {
            let host = format!("algo-{}", h + 1);
            let expected: String = share.iter().map(|o| content(&o.relative.display().to_string())).collect();
            let got = model_file(&bucket, "pipe-shard-job", &format!("{host}/train_{epoch}"));
            assert_eq!(String::from_utf8_lossy(&got), expected, "{host}, epoch {epoch}");
            seen += share.len();
            if h == 0 {
                epochs_of_host_1.push(got);
            }
        }
        assert_eq!(seen, keys.len());
    }
    assert_ne!(epochs_of_host_1[0], epochs_of_host_1[1], "the seed reshuffles every epoch");
    // Each epoch deals an object to one host, which streams it once (into the cache on the
    // way). Hosts run their epochs at their own pace, so another host's epoch 1 may want an
    // object before epoch 0's stream of it has finished filling the cache: then it asks S3
    // again, as every host on AWS does. Never more than once an epoch.
    let gets = crate::s3_server::object_gets(&bucket.name);
    for k in &keys {
        let n = gets.get(&format!("train/{k}")).copied().unwrap_or(0);
        assert!((1..=2).contains(&n), "GETs of {k}: {gets:?}");
    }
    // The same job again streams every epoch from the cache: not one GET.
    let mut again = req.clone();
    again["TrainingJobName"] = json!("pipe-shard-job-again");
    again["OutputDataConfig"]["S3OutputPath"] = json!(bucket.uri("again"));
    let run = sm.train(&again, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let warm = crate::s3_server::object_gets(&bucket.name);
    for k in &keys {
        let key = format!("train/{k}");
        assert_eq!(warm.get(&key), gets.get(&key), "a warm run asked S3 for {k}: {warm:?}");
    }
    // An unsharded, unshuffled channel: every host gets every object, in key order.
    for host in ["algo-1", "algo-2", "algo-3"] {
        assert_eq!(model_file(&bucket, "pipe-shard-job", &format!("{host}/val_0")), b"alpha;bravo;");
    }
    let config: Value =
        serde_json::from_slice(&model_file(&bucket, "pipe-shard-job", "algo-2/inputdataconfig.json")).unwrap();
    assert_eq!(config["train"]["TrainingInputMode"], "Pipe");
    assert_eq!(config["train"]["S3DistributionType"], "ShardedByS3Key");
}

#[test]
fn recordio_frames_each_object_and_gzip_objects_arrive_decompressed() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pipe-rec-{}", unique()));
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("rec/a".into(), b"abcde".to_vec()),
        ("rec/b".into(), Vec::new()),
        ("rec/c".into(), pseudo_random(1021, 3)),
        ("rec/d".into(), b"wxyz".to_vec()),
    ];
    for (k, v) in &objects {
        bucket.put(k, v);
    }
    let text = "1.0,2.0\n".repeat(5000);
    bucket.put("gz/one.csv.gz", &gzip(text.as_bytes()));
    // Two gzip members in one object, as `cat a.gz b.gz` makes: both are the object.
    let mut two = gzip(b"first member;");
    two.extend(gzip(b"second member"));
    bucket.put("gz/two.csv.gz", &two);
    let steps = [
        "pipe",
        "rec",
        "1",
        "/opt/ml/model",
        "pipe",
        "gz",
        "1",
        "/opt/ml/model",
        "pipe",
        "gzrec",
        "1",
        "/opt/ml/model",
    ];
    let mut rec = pipe_channel("rec", &bucket.uri("rec/"), "S3Prefix");
    rec["RecordWrapperType"] = json!("RecordIO");
    let mut gz = pipe_channel("gz", &bucket.uri("gz/"), "S3Prefix");
    gz["CompressionType"] = json!("Gzip");
    let mut gzrec = gz.clone();
    gzrec["ChannelName"] = json!("gzrec");
    gzrec["RecordWrapperType"] = json!("RecordIO");
    let req = pipe_request("pipe-rec-job", &bucket, &steps, vec![rec, gz, gzrec]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");

    let dir = tempfile::tempdir().unwrap();
    let framed = dir.path().join("rec_0");
    std::fs::write(&framed, model_file(&bucket, "pipe-rec-job", "rec_0")).unwrap();
    let records = read_recordio(&framed);
    let hexes: Vec<&str> = records.iter().map(|r| r["hex"].as_str().unwrap()).collect();
    let expected: Vec<String> = objects.iter().map(|(_, v)| hex(v)).collect();
    assert_eq!(hexes, expected);

    let plain = model_file(&bucket, "pipe-rec-job", "gz_0");
    assert_eq!(String::from_utf8_lossy(&plain), format!("{text}first member;second member"));
    let framed = dir.path().join("gzrec_0");
    std::fs::write(&framed, model_file(&bucket, "pipe-rec-job", "gzrec_0")).unwrap();
    let records = read_recordio(&framed);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["hex"], json!(hex(text.as_bytes())));
    assert_eq!(records[1]["hex"], json!(hex(b"first member;second member")));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_object_of_600_mib_is_split_into_multipart_records() {
    let sm = Smlocal::new();
    let name = format!("pipe-big-{}", unique());
    let bucket = s3().bucket(&name);
    // Written as the S3 server's own file, mostly holes: 600 MiB that costs nothing on disk.
    let size: u64 = 600 << 20;
    s3().put_sparse(&name, "big/blob.bin", size, b"first sixteen b.", b"...last sixteen!");
    bucket.put("big/small.bin", b"tiny");
    let steps = ["pipe", "big", "1", "/opt/ml/model"];
    let mut big = pipe_channel("big", &bucket.uri("big/"), "S3Prefix");
    big["RecordWrapperType"] = json!("RecordIO");
    let req = pipe_request("pipe-big-job", &bucket, &steps, vec![big]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // The model is packed sparse, so it is small; extracted by Python's tarfile.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("model.tar.gz");
    std::fs::write(&archive, bucket.get("output/pipe-big-job/output/model.tar.gz").unwrap()).unwrap();
    let extract = Command::new(sdk_python())
        .args(["-c", "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])"])
        .arg(&archive)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(extract.success());
    let records = read_recordio(&dir.path().join("big_0"));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["size"], json!(size));
    assert_eq!(records[0]["flags"], json!([1, 3]), "{records:?}");
    assert_eq!(records[0]["head"], json!(hex(b"first sixteen b.")));
    assert_eq!(records[0]["tail"], json!(hex(b"...last sixteen!")));
    assert_eq!(records[1]["hex"], json!(hex(b"tiny")));
}

#[test]
fn an_augmented_manifest_sends_referenced_bytes_and_attribute_text_per_line() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pipe-aug-{}", unique()));
    bucket.put("images/cat.jpg", b"CAT-BYTES");
    bucket.put("images/dog.jpg", &pseudo_random(333, 9));
    bucket.put("images/eel.jpg", b"EEL");
    let lines = [
        (
            r#"{"source-ref": "s3://BUCKET/images/cat.jpg", "label": 0, "meta": {"w": 1, "tags": ["a", "b"]}}"#,
            "cat.jpg",
            "0",
            r#"{"w":1,"tags":["a","b"]}"#,
        ),
        (
            r#"{"label": 1.50, "meta": "plain \"text\"", "source-ref": "s3://BUCKET/images/dog.jpg"}"#,
            "dog.jpg",
            "1.50",
            "plain \"text\"",
        ),
        (
            r#"{"source-ref": "s3://BUCKET/images/eel.jpg", "label": 2, "meta": null, "other": 5}"#,
            "eel.jpg",
            "2",
            "null",
        ),
    ];
    let manifest: String = lines.iter().map(|l| format!("{}\n", l.0.replace("BUCKET", &bucket.name))).collect();
    bucket.put("train.manifest", manifest.as_bytes());
    let steps = ["pipe", "rec", "2", "/opt/ml/model", "pipe", "cat", "1", "/opt/ml/model"];
    let augmented = |name: &str| {
        let mut c = pipe_channel(name, &bucket.uri("train.manifest"), "AugmentedManifestFile");
        c["DataSource"]["S3DataSource"]["AttributeNames"] = json!(["source-ref", "label", "meta"]);
        c
    };
    let mut rec = augmented("rec");
    rec["RecordWrapperType"] = json!("RecordIO");
    rec["ShuffleConfig"] = json!({"Seed": 5});
    let req = pipe_request("pipe-aug-job", &bucket, &steps, vec![rec, augmented("cat")]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");

    let image = |file: &str| bucket.get(&format!("images/{file}")).unwrap();
    // Without RecordIO: each line's values one after another, lines in order.
    let mut expected = Vec::new();
    for (_, file, label, meta) in &lines {
        expected.extend(image(file));
        expected.extend(label.as_bytes());
        expected.extend(meta.as_bytes());
    }
    assert_eq!(model_file(&bucket, "pipe-aug-job", "cat_0"), expected);
    // With RecordIO: one record per attribute; lines shuffled by the rule (lines in their
    // order are objects in key order), again in the next epoch.
    let dir = tempfile::tempdir().unwrap();
    let by_line: Vec<StagedObject> = (0..3)
        .map(|i| StagedObject { uri: format!("s3://x/{i}"), relative: i.to_string().into(), info: None })
        .collect();
    let mut orders = Vec::new();
    for epoch in 0..2 {
        let order: Vec<usize> = shard(by_line.clone(), 1, Some(5 + epoch))[0]
            .iter()
            .map(|o| o.relative.display().to_string().parse().unwrap())
            .collect();
        let framed = dir.path().join(format!("rec_{epoch}"));
        std::fs::write(&framed, model_file(&bucket, "pipe-aug-job", &format!("rec_{epoch}"))).unwrap();
        let records = read_recordio(&framed);
        let expected: Vec<String> = order
            .iter()
            .flat_map(|&i| {
                let (_, file, label, meta) = lines[i];
                [hex(&image(file)), hex(label.as_bytes()), hex(meta.as_bytes())]
            })
            .collect();
        let got: Vec<String> = records.iter().map(|r| r["hex"].as_str().unwrap().to_string()).collect();
        assert_eq!(got, expected, "epoch {epoch}");
        orders.push(order);
    }
}

#[test]
fn an_early_close_ends_the_epoch_and_the_next_epoch_is_whole() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pipe-early-{}", unique()));
    let data = pseudo_random(3 << 20, 11);
    bucket.put("train/a.bin", &data[..1 << 20]);
    bucket.put("train/b.bin", &data[1 << 20..]);
    let steps = ["pipe-head", "train", "0", "10", "pipe", "train", "1..3", "/opt/ml/model"];
    let req =
        pipe_request("pipe-early-job", &bucket, &steps, vec![pipe_channel("train", &bucket.uri("train/"), "S3Prefix")]);
    let started = Instant::now();
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("pipe train_0 closed after 10 bytes"), "{run:?}");
    assert_eq!(model_file(&bucket, "pipe-early-job", "train_1"), data);
    assert_eq!(model_file(&bucket, "pipe-early-job", "train_2"), data);
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_reader_that_never_opens_its_fifo_neither_hangs_the_job_nor_its_stop() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pipe-never-{}", unique()));
    bucket.put("train/a.bin", b"never read");
    let channel = || vec![pipe_channel("train", &bucket.uri("train/"), "S3Prefix")];
    // Exits without opening train_0: the job completes at once.
    let req = pipe_request("pipe-never-job", &bucket, &["exists", "/opt/ml/input/data/train_0"], channel());
    let started = Instant::now();
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("exists /opt/ml/input/data/train_0=true"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    // Sleeps without opening it: `smlocal stop` stops it and nothing stays behind.
    let req = pipe_request("pipe-stopped-job", &bucket, &["on-term", "0", "echo", "ready", "sleep", "300"], channel());
    let (mut child, mut lines) = sm.spawn_train(&req, &[]);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.ends_with("| ready")));
    let stop = Run::from(sm.command().args(["stop", "pipe-stopped-job"]).output().unwrap());
    assert_eq!(stop.code, 0, "{stop:?}");
    let stopping = Instant::now();
    let _rest: Vec<String> = lines.map_while(Result::ok).collect();
    child.wait().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(20), "the stop took {:?}", stopping.elapsed());
    assert_eq!(sm.describe("pipe-stopped-job")["TrainingJobStatus"], "Stopped");
    assert_eq!(leftovers("pipe-stopped-job"), (String::new(), String::new()));
}

#[test]
fn a_manifest_naming_a_missing_object_fails_the_job_naming_it() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pipe-missing-{}", unique()));
    bucket.put("data/here.csv", b"1,2\n");
    let manifest = json!([{"prefix": bucket.uri("data/")}, "here.csv", "gone.csv"]);
    bucket.put("train.manifest", manifest.to_string().as_bytes());
    let req = pipe_request(
        "pipe-missing-job",
        &bucket,
        &["pipe", "train", "1", "/opt/ml/model"],
        vec![pipe_channel("train", &bucket.uri("train.manifest"), "ManifestFile")],
    );
    let started = Instant::now();
    let run = sm.train(&req, &[]);
    assert_ne!(run.code, 0, "{run:?}");
    let record = sm.describe("pipe-missing-job");
    assert_eq!(record["TrainingJobStatus"], "Failed");
    let reason = record["FailureReason"].as_str().unwrap();
    assert!(reason.starts_with("ClientError: channel 'train' on algo-1"), "{reason}");
    assert!(reason.contains(&bucket.uri("data/gone.csv")), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(leftovers("pipe-missing-job"), (String::new(), String::new()));
}

#[test]
fn a_fast_file_channel_is_read_only_for_the_algorithm() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("fastfile-{}", unique()));
    bucket.put("train/a.csv", b"1,2\n");
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("b.csv"), b"3,4\n").unwrap();
    let steps = [
        "copy",
        "/opt/ml/input/data/train/a.csv",
        "/opt/ml/model/a.csv",
        "copy",
        "/opt/ml/input/data/local/b.csv",
        "/opt/ml/model/b.csv",
        "copy",
        "/opt/ml/input/config/inputdataconfig.json",
        "/opt/ml/model/inputdataconfig.json",
        "may-fail",
        "write",
        "/opt/ml/input/data/train/new.csv",
        "x",
        "write",
        "/opt/ml/input/data/local/new.csv",
        "x",
        "rm",
        "/opt/ml/input/data/train/a.csv",
    ];
    let mut req = probe_request("fastfile-job", &bucket, &steps);
    req["AlgorithmSpecification"]["TrainingInputMode"] = json!("FastFile");
    let local_uri = format!("file://{}/", local.path().display());
    req["InputDataConfig"] = json!([
        {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri("train/")}}},
        {"ChannelName": "local", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": local_uri}}}
    ]);
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    for step in ["write: ", "write: ", "rm: "] {
        assert!(run.stdout.contains(&format!("probe: step failed: {step}")), "{run:?}");
    }
    assert_eq!(run.stdout.matches("Read-only file system").count(), 3, "{run:?}");
    assert_eq!(model_file(&bucket, "fastfile-job", "a.csv"), b"1,2\n");
    assert_eq!(model_file(&bucket, "fastfile-job", "b.csv"), b"3,4\n");
    let config: Value = serde_json::from_slice(&model_file(&bucket, "fastfile-job", "inputdataconfig.json")).unwrap();
    assert_eq!(config["train"]["TrainingInputMode"], "FastFile");
    assert_eq!(std::fs::read(local.path().join("b.csv")).unwrap(), b"3,4\n");
    assert!(!local.path().join("new.csv").exists());
}

#[test]
fn a_reader_that_pauses_longer_than_the_s3_timeout_still_gets_every_byte() {
    // Ranges are read whole, as fast as the server sends them: no request waits on the
    // reader, so a pause longer than SMLOCAL_S3_TIMEOUT fails nothing.
    let sm = Smlocal::new();
    let name = format!("pipe-pause-{}", unique());
    let bucket = s3().bucket(&name);
    let size: u64 = 40 << 20;
    s3().put_sparse(&name, "slow/blob.bin", size, b"head", b"tail");
    let steps = ["pipe-pause", "slow", "0", "4"];
    let req =
        pipe_request("pipe-pause-job", &bucket, &steps, vec![pipe_channel("slow", &bucket.uri("slow/"), "S3Prefix")]);
    let file = sm.home.path().join("request-pause.json");
    std::fs::write(&file, req.to_string()).unwrap();
    let run = Run::from(sm.command().env("SMLOCAL_S3_TIMEOUT", "1").arg("train").arg(&file).output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&format!("pipe slow_0 bytes={size} after a 4 s pause")), "{run:?}");
}
