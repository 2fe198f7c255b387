//! l. The console with 10,000 jobs in the store (issue "The console"): each page's first
//! byte and whole HTML over HTTP, against the API answer it is built from (the floor: the
//! same server, the same data, as JSON); then, in headless Chromium, first byte and full
//! load (every asset, the live stream opened) from the browser's own Navigation Timing.

use super::{harness, row};
use serde_json::json;
use std::time::Instant;

#[allow(dead_code)]
#[path = "../../tests/e2e/browser.rs"]
mod browser;

fn p50(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub(crate) async fn console(tiny: bool) {
    let jobs = if tiny { 1_000 } else { 10_000 };
    let sm = harness::Smlocal::new();
    let home = sm.home.path();
    let request = json!({
        "RoleArn": "arn:aws:iam::123456789012:role/R",
        "AlgorithmSpecification": {"TrainingImage": "smlocal/probe:latest", "TrainingInputMode": "File"},
        "HyperParameters": {"lr": "0.5", "epochs": "10"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bench/train/"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://bench/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300}
    });
    let template = smlocal::Record::new("x", "arn", "s3://bench/out", request.as_object().expect("object"));
    let mut template = serde_json::to_value(&template).expect("record");
    for i in 0..jobs {
        let name = format!("bench-job-{i:06}");
        let dir = home.join("jobs").join(&name);
        std::fs::create_dir_all(&dir).expect("job dir");
        template["TrainingJobName"] = json!(name);
        template["TrainingJobArn"] = json!(format!("arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"));
        template["CreationTime"] = json!(1_700_000_000.0 + i as f64);
        template["TrainingJobStatus"] = json!(if i % 3 == 0 { "Failed" } else { "Completed" });
        std::fs::write(dir.join("record.json"), template.to_string()).expect("record");
    }
    // The job whose page is timed: a log of 100,000 lines and 1,000 metric points.
    let shown = "bench-job-000007";
    super::scale::write_log(&home.join("jobs").join(shown).join("logs"), 100_000);
    let points: String = (0..1000)
        .map(|i| {
            format!(
                "{{\"metric\":\"loss\",\"host\":\"algo-1\",\"timestamp\":{},\"value\":{}}}\n",
                1_700_000_000 + i,
                1.0 / (1.0 + f64::from(i))
            )
        })
        .collect();
    std::fs::write(home.join("jobs").join(shown).join("metrics.jsonl"), points).expect("metrics");
    println!("l. the console with {jobs} jobs in the store");
    let server = sm.serve(&[]);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let api = |target: &str, body: serde_json::Value| {
        client
            .post(&server.url)
            .header("x-amz-target", format!("SageMaker.{target}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
    };
    // The first request builds the index and reads botocore's model: not a page's cost.
    let _ = api("ListTrainingJobs", json!({})).await.expect("list").bytes().await;
    let first_page = reqwest::get(format!("{}/", server.url)).await.expect("page").text().await.expect("html");
    let next = first_page
        .split("id=\"next\" href=\"/?")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .replace("&amp;", "&");
    let pages = [
        (
            "list",
            "/".to_string(),
            "ListTrainingJobs",
            json!({"MaxResults": 50, "SortBy": "CreationTime", "SortOrder": "Descending"}),
        ),
        (
            "list, Failed + search",
            "/?status=Failed&q=job-00".to_string(),
            "ListTrainingJobs",
            json!({"MaxResults": 50, "StatusEquals": "Failed", "NameContains": "job-00", "SortBy": "CreationTime", "SortOrder": "Descending"}),
        ),
        (
            "list, page 2",
            format!("/?{next}"),
            "ListTrainingJobs",
            json!({"MaxResults": 50, "SortBy": "CreationTime", "SortOrder": "Descending"}),
        ),
        ("job, 100k log lines", format!("/jobs/{shown}"), "DescribeTrainingJob", json!({"TrainingJobName": shown})),
        ("clone", format!("/jobs/{shown}/clone"), "DescribeTrainingJob", json!({"TrainingJobName": shown})),
    ];
    let repeats = if tiny { 5 } else { 20 };
    for (label, path, target, body) in &pages {
        let (mut first, mut whole, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            let t = Instant::now();
            let response = client.get(format!("{}{path}", server.url)).send().await.expect("page");
            first.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(response.status().is_success(), "{path}: {}", response.status());
            response.bytes().await.expect("html");
            whole.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            api(target, body.clone()).await.expect("api").bytes().await.expect("json");
            floor.push(t.elapsed().as_secs_f64() * 1e3);
        }
        row(&format!("   {label}: first byte (ms) vs API"), p50(first), p50(floor.clone()), " ms");
        row(&format!("   {label}: whole (ms) vs API"), p50(whole), p50(floor), " ms");
    }
    // In the browser: Navigation Timing's first byte and load end, then the live stream.
    let chromium = browser::Browser::start(1280, 1000).await;
    for (label, path, _, _) in &pages {
        let (mut first, mut load) = (Vec::new(), Vec::new());
        for _ in 0..repeats.min(5) {
            chromium.goto(&format!("{}{path}", server.url)).await;
            let timing = chromium
                .js("const n = performance.getEntriesByType('navigation')[0]; return [n.responseStart - n.startTime, n.loadEventEnd - n.startTime];")
                .await;
            first.push(timing[0].as_f64().unwrap_or(0.0));
            load.push(timing[1].as_f64().unwrap_or(0.0));
        }
        println!(
            "{:<44} {:>10.3} ms {:>10.3} ms   (first byte, full load)",
            format!("   {label} in Chromium"),
            p50(first),
            p50(load)
        );
    }
    chromium.close().await;
}
