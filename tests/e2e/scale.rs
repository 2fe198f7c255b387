//! At scale (issue "At scale"): many jobs in the store, killed and concurrent writers of its
//! index, a busy server, a burst of creates, many objects staged.

use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// Writes `count` finished jobs' records into the state directory as an earlier smlocal
/// (one that kept no index) left them: `<prefix>-<i>` created at `base + i` seconds.
fn leave_records(sm: &Smlocal, prefix: &str, count: usize, base: f64) {
    let template = smlocal::Record::new("x", "arn", "s3://bucket/out", &serde_json::Map::new());
    let mut template = serde_json::to_value(&template).expect("record");
    for i in 0..count {
        let name = format!("{prefix}-{i:05}");
        let dir = sm.job_dir(&name);
        std::fs::create_dir_all(&dir).expect("job folder");
        template["TrainingJobName"] = json!(name);
        template["TrainingJobArn"] = json!(format!("arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"));
        template["CreationTime"] = json!(base + i as f64);
        template["TrainingJobStatus"] = json!(if i % 4 == 0 { "Failed" } else { "Completed" });
        std::fs::write(dir.join("record.json"), template.to_string()).expect("record");
    }
}

fn list_lines(sm: &Smlocal, extra: &[&str]) -> Vec<String> {
    let out = sm.command().arg("list").args(extra).output().expect("smlocal list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn ten_thousand_jobs_page_once_each_in_order_whatever_happened_to_the_index() {
    let sm = Smlocal::new();
    leave_records(&sm, "many", 10_000, 1_700_000_000.0);
    let server = sm.serve(&[]);
    let walked = calls(&sm, &server, &["list", "many-", "100"]);
    let names: Vec<&str> = walked["names"].as_array().expect("names").iter().filter_map(Value::as_str).collect();
    let expected: Vec<String> = (0..10_000).map(|i| format!("many-{i:05}")).collect();
    assert_eq!(names.len(), 10_000, "every job, and each once");
    assert!(names.iter().zip(&expected).all(|(a, b)| *a == b), "in name order");
    assert_eq!(walked["pages"].as_array().map(Vec::len), Some(100));

    // The index deleted under the running server, and records added and removed behind its
    // back: listings still agree with the records.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(sm.home.path().join(format!("index.sqlite{suffix}")));
    }
    leave_records(&sm, "late", 5, 1_800_000_000.0);
    std::fs::remove_dir_all(sm.job_dir("many-00003")).expect("remove a record");
    let lines = list_lines(&sm, &[]);
    assert_eq!(lines.len(), 10_004, "smlocal list sees every record");
    assert!(lines[0].starts_with("late-00004"), "newest first: {}", lines[0]);
    assert!(!lines.iter().any(|l| l.starts_with("many-00003 ")), "a removed record is not listed");
    let late = calls(&sm, &server, &["list", "late-", "2"]);
    assert_eq!(late["names"], json!(["late-00000", "late-00001", "late-00002", "late-00003", "late-00004"]));
    let failed = list_lines(&sm, &["--status-equals", "Failed", "--name-contains", "many-000"]);
    // many-00000 .. many-00099 with i % 4 == 0: 25 of them.
    assert_eq!(failed.len(), 25, "{failed:?}");
}

#[test]
fn killed_and_concurrent_writers_leave_the_listing_true_to_the_records() {
    let (sm, bucket) = with_data("writers");
    let server = sm.serve(&[]);
    let name = format!("writers-{}", unique());

    // Two `smlocal train` at once and a create through the server.
    let trains: Vec<_> = (0..2)
        .map(|i| sm.spawn_train(&probe_request(&format!("{name}-cli-{i}"), &bucket, &["sleep", "1"]), &[]))
        .collect();
    let via_api = format!("{name}-api");
    let created =
        calls(&sm, &server, &["create", &request_file(&sm, &probe_request(&via_api, &bucket, &["sleep", "1"]))]);
    assert!(created.get("arn").is_some(), "{created}");
    for (mut child, _) in trains {
        assert!(child.wait().expect("smlocal train").success());
    }
    calls(&sm, &server, &["wait", &via_api]);
    let walked = calls(&sm, &server, &["list", &name, "10"]);
    assert_eq!(walked["names"], json!([format!("{name}-api"), format!("{name}-cli-0"), format!("{name}-cli-1")]));
    let completed = list_lines(&sm, &["--status-equals", "Completed", "--name-contains", &name]);
    assert_eq!(completed.len(), 3, "{completed:?}");

    // Writers killed (SIGKILL) at different moments of their jobs: whatever each managed to
    // write, the listing says what its record says.
    let mut killed = Vec::new();
    for (i, delay) in [0u64, 150, 400, 700, 1000, 1500, 2500].into_iter().enumerate() {
        let job = format!("{name}-kill-{i}");
        let (mut child, _) = sm.spawn_train(&probe_request(&job, &bucket, &["sleep", "30"]), &[]);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        killed.push(job);
    }
    // What the dead processes had asked Docker for lands meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let agree = |expected: Option<&str>| {
        let listed: Vec<(String, String)> = list_lines(&sm, &["--name-contains", &format!("{name}-kill-")])
            .iter()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect();
        for job in &killed {
            let on_disk = sm.job_dir(job).join("record.json").exists();
            let row = listed.iter().find(|(n, _)| n == job);
            match (on_disk, row) {
                (false, None) => {}
                (true, Some((_, status))) => {
                    let described = sm.describe(job)["TrainingJobStatus"].as_str().unwrap_or_default().to_string();
                    assert_eq!(status, &described, "{job}");
                    if let Some(expected) = expected {
                        assert_eq!(status, expected, "{job}");
                    }
                }
                _ => panic!("{job}: record on disk {on_disk}, listed {row:?}"),
            }
        }
        listed.len()
    };
    assert!(agree(None) >= 3, "the later kills came after their records");
    // `smlocal cleanup` removes what the dead runs left and marks their jobs Failed: the
    // listing follows.
    let cleaned = sm.command().arg("cleanup").output().expect("smlocal cleanup");
    assert!(cleaned.status.success(), "{}", String::from_utf8_lossy(&cleaned.stderr));
    agree(Some("Failed"));
    for job in &killed {
        assert_eq!(leftovers(job), (String::new(), String::new()), "{job} left Docker objects");
    }
}

#[test]
fn a_thousand_requests_at_once_and_a_burst_of_two_hundred_creates() {
    let (sm, bucket) = with_data("burst");
    let server = sm.serve(&["--max-parallel", "1"]);
    let name = format!("burst-{}", unique());
    let holder = format!("{name}-holder");
    let request = probe_request(&holder, &bucket, &["on-term", "0", "sleep", "120"]);
    assert!(calls(&sm, &server, &["create", &request_file(&sm, &request)]).get("arn").is_some());
    wait_for(&sm, &holder, "Training", |r| r["SecondaryStatus"] == "Training");

    let hammered = calls(&sm, &server, &["hammer", &holder, "1000"]);
    assert_eq!(hammered, json!({"ok": 1000, "errors": []}), "{hammered:#}");

    // 200 creates at once (and one more reusing a name): all admitted in order, none lost.
    let queued = format!("{name}-q");
    let request = probe_request(&queued, &bucket, &["on-term", "0", "sleep", "120"]);
    let created = calls(&sm, &server, &["create-many", &request_file(&sm, &request), "200"]);
    let results = created.as_array().expect("results");
    let admitted = results.iter().filter(|r| r.get("arn").is_some()).count();
    let refused: Vec<&Value> = results.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!((admitted, refused.len()), (200, 1), "{created:#}");
    assert_eq!(refused[0]["error"], "ResourceInUse");
    let walked = calls(&sm, &server, &["list", &format!("{queued}-"), "100"]);
    let names: BTreeSet<&str> = walked["names"].as_array().expect("names").iter().filter_map(Value::as_str).collect();
    assert_eq!(names.len(), 200, "every admitted job is listed once");
    // Each waits its turn; the queue's order is the order of their Pending transitions.
    let mut waiting: Vec<(f64, String)> = names
        .iter()
        .map(|n| {
            let record = wait_for(&sm, n, "Pending", |r| r["SecondaryStatus"] == "Pending");
            let since = record["SecondaryStatusTransitions"][1]["StartTime"].as_f64().expect("Pending's start");
            (since, n.to_string())
        })
        .collect();
    waiting.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(calls(&sm, &server, &["stop", &holder]), json!({}));
    let first = &waiting[0].1;
    wait_for(&sm, first, "Training", |r| r["SecondaryStatus"] == "Training");
    for (_, other) in &waiting[1..] {
        assert_eq!(sm.describe(other)["SecondaryStatus"], "Pending", "{other} started before {first}");
    }
    let stopped = calls(&sm, &server, &["stop-all", &name]);
    assert_eq!(stopped["stopped"], json!(200), "{stopped}");
    for (_, n) in &waiting {
        wait_for(&sm, n, "Stopped", |r| r["TrainingJobStatus"] == "Stopped");
    }
    assert_eq!(leftovers(first), (String::new(), String::new()));
}

#[test]
fn a_hundred_thousand_tiny_objects_are_all_staged() {
    let (sm, bucket) = with_data("tiny");
    let count = 100_000;
    // Written where the server keeps them (s3s-fs serves a folder): uploading 100,000
    // objects one request at a time would test the upload, not the staging. They are named
    // by a manifest: the tests' server walks the whole bucket for every listing page, which
    // real S3 does not (the listed case is the 5,000 below, in a bucket of their own).
    let folder = s3().root.join(&bucket.name).join("many");
    std::fs::create_dir_all(&folder).expect("bucket folder");
    let mut manifest = vec![json!({"prefix": bucket.uri("many/")})];
    for i in 0..count {
        std::fs::write(folder.join(format!("part-{i:06}")), format!("{i}\n")).expect("object");
        manifest.push(json!(format!("part-{i:06}")));
    }
    bucket.put("many.manifest", serde_json::to_string(&manifest).expect("manifest").as_bytes());
    let other = s3().bucket(&format!("tiny-listed-{}", unique()));
    let listed = s3().root.join(&other.name).join("listed");
    std::fs::create_dir_all(&listed).expect("bucket folder");
    for i in 0..5_000 {
        std::fs::write(listed.join(format!("part-{i:06}")), format!("{i}\n")).expect("object");
    }
    let name = format!("tiny-{}", unique());
    let mut request = probe_request(
        &name,
        &bucket,
        &["count-files", "/opt/ml/input/data/train", "count-files", "/opt/ml/input/data/listed"],
    );
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataType"] = json!("ManifestFile");
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!(bucket.uri("many.manifest"));
    let mut second = request["InputDataConfig"][0].clone();
    second["ChannelName"] = json!("listed");
    second["DataSource"]["S3DataSource"]["S3DataType"] = json!("S3Prefix");
    second["DataSource"]["S3DataSource"]["S3Uri"] = json!(other.uri("listed/"));
    request["InputDataConfig"].as_array_mut().expect("channels").push(second);
    request["StoppingCondition"]["MaxRuntimeInSeconds"] = json!(900);
    let started = std::time::Instant::now();
    let run = sm.train(&request, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let bytes = |n: usize| -> usize { (0..n).map(|i| format!("{i}\n").len()).sum() };
    assert!(run.stdout.contains(&format!("files={count} bytes={}", bytes(count))), "{run:?}");
    assert!(run.stdout.contains(&format!("files=5000 bytes={}", bytes(5_000))), "{run:?}");
    eprintln!("105,000 tiny objects staged and counted in {:.1} s", started.elapsed().as_secs_f64());
}
