//! Batch transform (DESIGN §12) through `smlocal serve` with boto3 and the SageMaker SDK,
//! and in the foreground with `smlocal transform`, against real containers.

use crate::harness::*;
use serde_json::{Value, json};

fn transform(sm: &Smlocal, server: &Server, args: &[&str]) -> Value {
    let run = python(sm, server, "transform_calls.py", args);
    assert_eq!(run.code, 0, "transform_calls.py {args:?}: {run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// Trains the sample for a few epochs; returns the model's URI and its model.json.
fn trained(sm: &Smlocal, bucket: &Bucket) -> (String, Value) {
    let job = format!("tj-train-{}", unique());
    let run = sm.train(&sample_request(&job, bucket, 5), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let key = format!("output/{job}/output/model.tar.gz");
    let model: Value =
        serde_json::from_slice(&file_entry(&tar_entries(&bucket.get(&key).unwrap()), "model.json")).unwrap();
    (bucket.uri(&key), model)
}

fn rows(n: usize, seed: usize) -> (String, Vec<[f64; 2]>) {
    let rows: Vec<[f64; 2]> =
        (0..n).map(|i| [((i + seed) % 7) as f64 - 3.0, ((i * 3 + seed) % 5) as f64 * 0.5]).collect();
    (rows.iter().map(|r| format!("{},{}\n", r[0], r[1])).collect(), rows)
}

/// The output's lines, each checked against the model's prediction for its row.
fn assert_predictions(bucket: &Bucket, key: &str, model: &Value, expected: &[[f64; 2]]) {
    let out = bucket.get(key).unwrap_or_else(|| panic!("no {key}"));
    let lines: Vec<f64> = String::from_utf8(out).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines.len(), expected.len(), "{key}: one output record per input record");
    for (i, (got, row)) in lines.iter().zip(expected).enumerate() {
        assert!((got - sample_prediction(model, row)).abs() < 1e-9, "{key} record {}: {got} for {row:?}", i + 1);
    }
}

fn request(name: &str, model: &str, input: &str, output: &str, extra: Value) -> Value {
    let mut r = json!({
        "TransformJobName": name,
        "ModelName": model,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input}},
                           "ContentType": "text/csv", "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": output, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    });
    for (k, v) in extra.as_object().unwrap() {
        match (r.get_mut(k), v) {
            (Some(Value::Object(into)), Value::Object(from)) => into.extend(from.clone()),
            _ => r[k] = v.clone(),
        }
    }
    r
}

#[test]
fn boto3_scores_csv_lines_over_objects_and_instances_in_order_and_a_refused_record_fails_the_job() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("tj-{}", unique()));
    sample_request("unused", &bucket, 1);
    let (model_uri, model) = trained(&sm, &bucket);
    let server = sm.serve(&[]);
    let model_name = format!("lr-{}", unique());
    transform(&sm, &server, &["model", &model_name, SAMPLE_IMAGE, &model_uri, "{}"]);
    let inputs = [("in/a.csv", rows(300, 0)), ("in/sub/b.csv", rows(120, 1)), ("in/c.csv", rows(1, 2))];
    for (key, (text, _)) in &inputs {
        bucket.put(key, text.as_bytes());
    }
    // Two instances; the container's /execution-parameters decides concurrency and batching.
    let name = format!("tj-{}", unique());
    let extra = json!({"TransformResources": {"InstanceCount": 2}, "MaxPayloadInMB": 1});
    let req = request(&name, &model_name, &bucket.uri("in/"), &bucket.uri("out"), extra);
    let described = transform(&sm, &server, &["run", &request_file(&sm, &req)]);
    assert_eq!(described["TransformJobStatus"], "Completed", "{described:#}");
    assert_eq!(described["FirstStatus"], "InProgress", "{described}");
    assert_eq!(described["MaxConcurrentTransforms"], 2, "from /execution-parameters: {described:#}");
    assert_eq!(described["BatchStrategy"], "MultiRecord", "{described:#}");
    assert_eq!(described["MaxPayloadInMB"], 1, "the request's: {described:#}");
    for (key, (_, expected)) in &inputs {
        let out = format!("out/{}.out", key.strip_prefix("in/").unwrap());
        assert_predictions(&bucket, &out, &model, expected);
    }
    let streams = transform(&sm, &server, &["logs", &name]);
    assert_eq!(streams.as_object().unwrap().len(), 2, "one stream per instance: {streams}");
    assert!(streams.as_object().unwrap().keys().all(|k| k.starts_with(&format!("{name}/i-"))), "{streams}");

    // Gzip input.
    let (text, expected) = rows(40, 3);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    bucket.put("gz/part.csv.gz", &gz.finish().unwrap());
    let gzip = format!("tj-gz-{}", unique());
    let req = request(
        &gzip,
        &model_name,
        &bucket.uri("gz/"),
        &bucket.uri("gz-out/"),
        json!({"TransformInput": {"CompressionType": "Gzip"}}),
    );
    let described = transform(&sm, &server, &["run", &request_file(&sm, &req)]);
    assert_eq!(described["TransformJobStatus"], "Completed", "{described:#}");
    assert_predictions(&bucket, "gz-out/part.csv.gz.out", &model, &expected);

    // A record the container refuses: the job fails naming the object and the answer, and
    // no output for that object is left looking complete.
    bucket.put("bad/x.csv", b"1,2\nnot,numbers\n");
    let bad = format!("tj-bad-{}", unique());
    let req = request(&bad, &model_name, &bucket.uri("bad/"), &bucket.uri("bad-out/"), json!({}));
    let described = transform(&sm, &server, &["run", &request_file(&sm, &req)]);
    assert_eq!(described["TransformJobStatus"], "Failed", "{described:#}");
    let reason = described["FailureReason"].as_str().unwrap();
    assert!(reason.contains("Bad HTTP status received from algorithm: 400"), "{reason}");
    assert!(reason.contains(&bucket.uri("bad/x.csv")) && reason.contains("'not' is not a number"), "{reason}");
    assert!(bucket.get("bad-out/x.csv.out").is_none(), "a partial output was left");
}

#[test]
fn records_split_by_recordio_and_json_lines_filtered_and_joined_as_aws_defines() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("tjr-{}", unique()));
    let server = sm.serve(&[]);
    let length = format!("len-{}", unique());
    transform(&sm, &server, &["model", &length, PROBE_IMAGE, "-", &json!({"PROBE_INVOKE": "length"}).to_string()]);
    // Three RecordIO frames (the second a multipart record of two frames).
    let frame = |flag: u32, payload: &[u8]| {
        let mut out = 0xced7_230au32.to_le_bytes().to_vec();
        out.extend_from_slice(&((flag << 29) | payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    };
    let mut recordio = frame(0, b"abc");
    recordio.extend(frame(1, b"first half"));
    recordio.extend(frame(3, b"second"));
    recordio.extend(frame(0, b"0123456789abcdef"));
    bucket.put("rio/data.rec", &recordio);
    let name = format!("tj-rio-{}", unique());
    let extra = json!({"BatchStrategy": "SingleRecord",
                       "TransformInput": {"SplitType": "RecordIO", "ContentType": "application/x-recordio"}});
    let req = request(&name, &length, &bucket.uri("rio/"), &bucket.uri("rio-out/"), extra);
    let described = transform(&sm, &server, &["run", &request_file(&sm, &req)]);
    assert_eq!(described["TransformJobStatus"], "Completed", "{described:#}");
    let out = String::from_utf8(bucket.get("rio-out/data.rec.out").unwrap()).unwrap();
    // Each request is one whole record, frames and padding included.
    assert_eq!(out, "12\n36\n24\n", "{out}");
    // The same object named by a manifest: its output is named by its manifest entry.
    let manifest = json!([{"prefix": bucket.uri("rio/")}, "data.rec"]).to_string();
    bucket.put("m/list.manifest", manifest.as_bytes());
    let name = format!("tj-man-{}", unique());
    let extra = json!({"BatchStrategy": "SingleRecord",
                       "TransformInput": {"SplitType": "RecordIO", "ContentType": "application/x-recordio",
                                          "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": bucket.uri("m/list.manifest")}}}});
    let req = request(&name, &length, &bucket.uri("rio/"), &bucket.uri("man-out/"), extra);
    let described = transform(&sm, &server, &["run", &request_file(&sm, &req)]);
    assert_eq!(described["TransformJobStatus"], "Completed", "{described:#}");
    assert_eq!(String::from_utf8(bucket.get("man-out/data.rec.out").unwrap()).unwrap(), "12\n36\n24\n");

    let echo = format!("echo-{}", unique());
    transform(&sm, &server, &["model", &echo, PROBE_IMAGE, "-", "{}"]);
    bucket.put("jl/in.jsonl", b"{\"id\": 1, \"features\": [1, 2]}\n{\"id\": 2, \"features\": [3, 4]}\n");
    let name = format!("tj-json-{}", unique());
    let extra = json!({
        "BatchStrategy": "MultiRecord",
        "TransformInput": {"ContentType": "application/jsonlines"},
        "DataProcessing": {"InputFilter": "$.features", "JoinSource": "Input", "OutputFilter": "$['id','SageMakerOutput']"},
    });
    let req = request(&name, &echo, &bucket.uri("jl/"), &bucket.uri("jl-out/"), extra);
    let described = transform(&sm, &server, &["run", &request_file(&sm, &req)]);
    assert_eq!(described["TransformJobStatus"], "Completed", "{described:#}");
    let out = String::from_utf8(bucket.get("jl-out/in.jsonl.out").unwrap()).unwrap();
    assert_eq!(out, "[1,[1,2]]\n[2,[3,4]]\n", "the container saw only the features; the output joins them to the id");

    // StopTransformJob: Stopping, then Stopped within the grace.
    let slow = format!("slow-{}", unique());
    transform(&sm, &server, &["model", &slow, PROBE_IMAGE, "-", &json!({"PROBE_INVOKE": "sleep:8"}).to_string()]);
    bucket.put("slow/a.csv", b"1\n2\n3\n");
    let name = format!("tj-stop-{}", unique());
    let req =
        request(&name, &slow, &bucket.uri("slow/"), &bucket.uri("slow-out/"), json!({"BatchStrategy": "SingleRecord"}));
    let stopped = transform(&sm, &server, &["stop-after", &name, "3", &request_file(&sm, &req)]);
    assert_eq!(stopped["StoppingStatus"], "Stopping", "{stopped}");
    assert_eq!(stopped["TransformJobStatus"], "Stopped", "{stopped:#}");
    assert!(stopped["StopSeconds"].as_f64().unwrap() < 31.0, "{stopped}");
    assert!(bucket.get("slow-out/a.csv.out").is_none(), "a stopped job left a partial output");
}

#[test]
fn the_sagemaker_sdk_transformer_runs_unchanged_and_smlocal_transform_runs_in_the_foreground() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("tjs-{}", unique()));
    sample_request("unused", &bucket, 1);
    let inputs = [("tin/one.csv", rows(25, 4)), ("tin/two.csv", rows(7, 5))];
    for (key, (text, _)) in &inputs {
        bucket.put(key, text.as_bytes());
    }
    let server = sm.serve(&[]);
    let run = python(
        &sm,
        &server,
        "sdk_transform.py",
        &[SAMPLE_IMAGE, &bucket.uri("data"), &bucket.uri("model-out"), &bucket.uri("tin/"), &bucket.uri("tout")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let value = |key: &str| {
        let found = run.stdout.lines().find_map(|l| l.split_once(key).map(|(_, v)| v.to_string()));
        found.unwrap_or_else(|| panic!("no {key}: {run:?}"))
    };
    let model_uri = value("model_data=");
    let key = model_uri.strip_prefix(&format!("s3://{}/", bucket.name)).unwrap();
    let model: Value =
        serde_json::from_slice(&file_entry(&tar_entries(&bucket.get(key).unwrap()), "model.json")).unwrap();
    for (key, (_, expected)) in &inputs {
        let out = format!("tout/{}.out", key.strip_prefix("tin/").unwrap());
        assert_predictions(&bucket, &out, &model, expected);
    }
    eprintln!("SDK transform() through smlocal serve: {}s", value("seconds="));
    drop(server);

    // The same job in the foreground, from a request file.
    let model_name = format!("fg-{}", unique());
    let server = sm.serve(&[]);
    transform(&sm, &server, &["model", &model_name, SAMPLE_IMAGE, &model_uri, "{}"]);
    drop(server);
    let name = format!("tj-fg-{}", unique());
    let req = request(&name, &model_name, &bucket.uri("tin/"), &bucket.uri("fg-out"), json!({}));
    let file = request_file(&sm, &req);
    let out = sm.command().args(["transform", &file]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{name} Completed")) && stderr.contains("2 objects, 32 records"), "{stderr}");
    assert_predictions(&bucket, "fg-out/two.csv.out", &model, &inputs[1].1.1);
}
