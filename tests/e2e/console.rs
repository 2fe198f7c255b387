//! The console (`smlocal serve`'s pages) in a real browser: headless Chromium over
//! WebDriver. A person follows jobs from creation to their model, watches logs and metric
//! curves arrive, searches the logs, stops a job with the button, clones a job and fixes
//! what the API refused; no other site can act through it.

use crate::browser::Browser;
use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

/// An AWS JSON call to the server, as boto3 makes it.
async fn call(server: &Server, operation: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(&server.url)
        .header("x-amz-target", format!("SageMaker.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .expect("the API answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn create(server: &Server, request: &Value) {
    let (status, answer) = call(server, "CreateTrainingJob", request).await;
    assert_eq!(status, 200, "CreateTrainingJob: {answer}");
}

async fn describe(server: &Server, name: &str) -> Value {
    call(server, "DescribeTrainingJob", &json!({"TrainingJobName": name})).await.1
}

/// A probe job printing a training curve (`epoch=E<tab>loss=L`, one line per `ms`) that
/// its MetricDefinitions read, then writing a model file.
fn curve_job(name: &str, bucket: &Bucket, epochs: u32, ms: u32, hosts: u32) -> Value {
    let curve = format!("lr:{epochs}:{ms}");
    let mut r = probe_request(
        name,
        bucket,
        &["on-term", "0", "echo", "starting {host}", "curve", &curve, "write", "/opt/ml/model/weights.txt", "trained"],
    );
    r["HyperParameters"] = json!({"lr": "0.5"});
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "train:loss", "Regex": "loss=([0-9.]+)"}]);
    r["ResourceConfig"]["InstanceCount"] = json!(hosts);
    r
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

#[test]
fn a_person_follows_jobs_live_from_the_list_to_their_model_and_stops_one_with_the_button() {
    let (sm, bucket) = with_data("console");
    let out = tempfile::tempdir().expect("tempdir");
    let out_root = out.path().display().to_string();
    let server = sm.serve(&["--allow-file-root", &out_root]);
    let (quick, long) = (format!("quick-{}", unique()), format!("long-{}", unique()));
    let mut quick_request = curve_job(&quick, &bucket, 6, 400, 1);
    quick_request["OutputDataConfig"]["S3OutputPath"] = json!(format!("file://{out_root}/models"));
    let long_request = curve_job(&long, &bucket, 200, 300, 2);
    runtime().block_on(async {
        let browser = Browser::start(1280, 1600).await;
        // The jobs table, open before the jobs exist; a mark in the page tells a reload.
        browser.goto(&format!("{}/", server.url)).await;
        assert_eq!(browser.text("h1").await, "Training jobs");
        browser.js("window.smlocalMark = 42; return true;").await;
        create(&server, &quick_request).await;
        create(&server, &long_request).await;
        let row = |name: &str, status: &str| {
            format!(
                "const r = document.querySelector('tr[data-job=\"{name}\"]'); return window.smlocalMark === 42 && !!r && r.dataset.status === '{status}';"
            )
        };
        browser.until("the new jobs appear, running", Duration::from_secs(20), &row(&long, "InProgress")).await;
        let order = browser.js("return Array.from(document.querySelectorAll('#rows tr')).map(r => r.dataset.job);").await;
        assert_eq!(order[0], json!(long), "newest first: {order}");
        assert!(browser.text(&format!("tr[data-job=\"{long}\"]")).await.contains("ml.m5.large × 2"));
        browser.until("the quick job completes in the table", Duration::from_secs(60), &row(&quick, "Completed")).await;
        browser.screenshot("jobs").await;

        // The running job's page: lines and points arrive without a reload.
        browser.click(&format!("tr[data-job=\"{long}\"] a")).await;
        browser.until("the job page opens", Duration::from_secs(10), &format!("return document.querySelector('h1').textContent === '{long}';")).await;
        browser.js("window.smlocalMark = 7; return true;").await;
        let lines = |more: u64| format!("return window.smlocalMark === 7 && document.querySelectorAll('#log .line').length >= {more};");
        browser.until("log lines arrive", Duration::from_secs(30), &lines(4)).await;
        let before = count(&browser.js("return document.querySelectorAll('#log .line').length;").await);
        browser.until("more log lines arrive live", Duration::from_secs(20), &lines(before + 5)).await;
        let points = "(function () { const f = document.querySelector('#chart [data-points]'); return f ? Number(f.dataset.points) : 0; })()";
        browser.until("the chart has points", Duration::from_secs(20), &format!("return {points} >= 2;")).await;
        let drawn = count(&browser.js(&format!("return {points};")).await);
        browser.until("the chart gains points", Duration::from_secs(20), &format!("return {points} > {drawn};")).await;
        let polylines = count(&browser.js("return document.querySelectorAll('#chart svg polyline').length;").await);
        assert_eq!(polylines, 2, "one curve per host");

        // Search and the host selector filter the lines, live.
        let search = browser.client.find(fantoccini::Locator::Css("#log-search")).await.expect("the log search");
        search.send_keys("epoch=1\t").await.expect("type into the search");
        let shown = "return Array.from(document.querySelectorAll('#log .line')).filter(l => !l.hidden).map(l => l.textContent);";
        browser.until("the search filters", Duration::from_secs(5), "return Array.from(document.querySelectorAll('#log .line')).some(l => l.hidden);").await;
        let visible = browser.js(shown).await;
        let visible: Vec<&str> = visible.as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(!visible.is_empty() && visible.iter().all(|l| l.contains("epoch=1")), "{visible:?}");
        search.clear().await.expect("clear the search");
        browser.js("const s = document.getElementById('log-search'); s.dispatchEvent(new Event('input')); return true;").await;
        browser.js("const h = document.getElementById('host'); h.value = 'algo-2'; h.dispatchEvent(new Event('input')); return true;").await;
        let hosts = browser.js("return Array.from(document.querySelectorAll('#log .line')).filter(l => !l.hidden).map(l => l.dataset.host);").await;
        let hosts: Vec<&str> = hosts.as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(!hosts.is_empty() && hosts.iter().all(|h| *h == "algo-2"), "{hosts:?}");
        browser.js("const h = document.getElementById('host'); h.value = ''; h.dispatchEvent(new Event('input')); return true;").await;
        // What it was given is on the page.
        let page = browser.text("main").await;
        for given in ["lr", "0.5", "train", "FullyReplicated", "algo-1: 1 objects, 2 B", "Caps applied to each container", "MaxRuntimeInSeconds"] {
            assert!(page.contains(given), "the job page does not show '{given}'");
        }
        browser.js("window.scrollTo(0, 0); document.activeElement.blur(); return true;").await;
        browser.screenshot("job-page").await;

        // Stop, with its confirmation; the page follows the job to Stopped.
        browser.click("#stop").await;
        browser.until("the confirmation", Duration::from_secs(5), "return !!document.getElementById('confirm-stop');").await;
        assert_eq!(describe(&server, &long).await["TrainingJobStatus"], "InProgress", "asking is not stopping");
        browser.click("#confirm-stop").await;
        browser.until("the job stops", Duration::from_secs(30), "const s = document.getElementById('status'); return !!s && s.textContent === 'Stopped' && !document.getElementById('stop');").await;
        assert_eq!(describe(&server, &long).await["TrainingJobStatus"], "Stopped");

        // The quick job's page: its timeline, final metric and model, served from file://.
        browser.goto(&format!("{}/jobs/{quick}", server.url)).await;
        let timeline = browser.text(".timeline").await;
        for step in ["Starting", "Downloading", "Training", "Uploading", "Completed"] {
            assert!(timeline.contains(step), "the timeline lacks {step}: {timeline}");
        }
        assert!(browser.text("main").await.contains("train:loss"), "the final metric is shown");
        let href = browser.js("return document.querySelector('a[href$=\"/files/model.tar.gz\"]').href;").await;
        let model = reqwest::get(href.as_str().expect("a model link")).await.expect("GET model.tar.gz");
        assert_eq!(model.status(), 200);
        let bytes = model.bytes().await.expect("the archive");
        let entries = tar_entries(&bytes);
        assert_eq!(file_entry(&entries, "weights.txt"), b"trained");

        // Read with JavaScript off: the server's own HTML holds the lines and the status.
        let html = reqwest::get(format!("{}/jobs/{quick}", server.url)).await.unwrap().text().await.unwrap();
        assert!(html.contains("epoch=6") && html.contains(">Completed<"), "the page is whole without its script");
        browser.close().await;
    });
}

#[test]
fn a_clone_with_an_invalid_field_is_refused_in_the_apis_words_then_fixed_it_runs() {
    let (sm, bucket) = with_data("clone");
    let server = sm.serve(&[]);
    let source = format!("source-{}", unique());
    runtime().block_on(async {
        create(&server, &curve_job(&source, &bucket, 2, 100, 1)).await;
        let browser = Browser::start(1280, 1400).await;
        browser.goto(&format!("{}/jobs/{source}", server.url)).await;
        browser.click("#clone").await;
        browser.until("the editor opens", Duration::from_secs(5), "return !!document.getElementById('request');").await;
        let text = browser.js("return document.getElementById('request').value;").await;
        let mut request: Value = serde_json::from_str(text.as_str().unwrap()).expect("the editor holds JSON");
        let name = request["TrainingJobName"].as_str().unwrap().to_string();
        assert!(name != source && name.starts_with(&source), "a new name from the old: {name}");
        request["ResourceConfig"]["InstanceCount"] = json!(0);
        let set = |r: &Value| format!("document.getElementById('request').value = {}; return true;", serde_json::to_string(&r.to_string()).unwrap());
        browser.js(&set(&request)).await;
        browser.click("#create").await;
        browser.until("the refusal", Duration::from_secs(10), "return !!document.getElementById('message');").await;
        let message = browser.text("#message").await;
        assert!(message.starts_with("ValidationException:") && message.contains("resourceConfig.instanceCount"), "{message}");
        assert_eq!(browser.text("#field").await, "ResourceConfig.InstanceCount");
        let selected = browser.js("const t = document.getElementById('request'); return document.activeElement === t && t.getAttribute('aria-invalid') === 'true' ? t.value.slice(t.selectionStart, t.selectionEnd) : '';").await;
        assert!(selected.as_str().unwrap_or_default().contains("\"InstanceCount\": 0"), "the field is selected: {selected}");
        assert!(browser.text("pre.excerpt mark").await.contains("\"InstanceCount\": 0"));
        browser.screenshot("clone-refused").await;
        assert_eq!(call(&server, "DescribeTrainingJob", &json!({"TrainingJobName": name})).await.0, 400, "nothing was created");

        // Fixed, it runs like CreateTrainingJob, and its page follows it.
        request["ResourceConfig"]["InstanceCount"] = json!(1);
        browser.js(&set(&request)).await;
        browser.click("#create").await;
        browser.until("the new job's page", Duration::from_secs(10), &format!("return location.pathname === '/jobs/{name}';")).await;
        browser.until("the cloned job completes", Duration::from_secs(60), "const s = document.getElementById('status'); return !!s && s.textContent === 'Completed';").await;
        assert_eq!(describe(&server, &name).await["HyperParameters"]["lr"], "0.5");
        browser.close().await;
    });
}

#[test]
fn no_other_site_can_stop_a_job_through_the_console() {
    let (sm, bucket) = with_data("csrf");
    let server = sm.serve(&[]);
    let name = format!("target-{}", unique());
    runtime().block_on(async {
        create(&server, &probe_request(&name, &bucket, &["on-term", "0", "sleep", "120"])).await;
        // Another origin on this machine: a page that posts the stop form at once.
        let attacker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let attacker_url = format!("http://{}", attacker.local_addr().unwrap());
        let page = format!(
            r#"<!DOCTYPE html><html><body><form id="f" method="post" action="{}/jobs/{name}/stop"><input name="token" value="guessed"></form><script>fetch("{}/jobs/{name}/stop", {{method: "POST", mode: "no-cors", body: new URLSearchParams({{token: "guessed"}})}}).finally(() => document.getElementById("f").submit());</script></body></html>"#,
            server.url, server.url
        );
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = attacker.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let reply = format!("HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}", page.len());
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        let browser = Browser::start(1024, 768).await;
        browser.goto(&attacker_url).await;
        browser.until("the form lands on the console", Duration::from_secs(10), &format!("return location.href.startsWith('{}');", server.url)).await;
        browser.until("the console refuses it", Duration::from_secs(5), "return document.body.innerText.includes('Refused');").await;
        browser.screenshot("cross-site-refused").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(describe(&server, &name).await["TrainingJobStatus"], "InProgress", "the job was stopped cross-site");

        // Even with the page token, a request naming another origin is refused; the
        // console's own form (same origin, token) stops the job.
        let home = reqwest::get(format!("{}/", server.url)).await.unwrap().text().await.unwrap();
        let token = home.split("name=\"smlocal-token\" content=\"").nth(1).and_then(|t| t.split('"').next()).expect("the page token");
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let stop = format!("{}/jobs/{name}/stop", server.url);
        let form = format!("token={token}");
        let refused = client.post(&stop).header("origin", &attacker_url).header("content-type", "application/x-www-form-urlencoded").body(form.clone()).send().await.unwrap();
        assert_eq!(refused.status(), 403);
        assert_eq!(describe(&server, &name).await["TrainingJobStatus"], "InProgress");
        let origin = server.url.clone();
        let stopped = client.post(&stop).header("origin", origin).header("sec-fetch-site", "same-origin").header("content-type", "application/x-www-form-urlencoded").body(form.clone()).send().await.unwrap();
        assert_eq!(stopped.status(), 303);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while describe(&server, &name).await["TrainingJobStatus"] != "Stopped" {
            assert!(std::time::Instant::now() < deadline, "the same-origin stop did not stop the job");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        browser.close().await;
    });
}

#[test]
fn an_endpoint_is_listed_described_and_invoked_from_its_page_on_a_phone() {
    let sm = Smlocal::new();
    let server = sm.serve(&[]);
    let name = format!("console-ep-{}", unique());
    let env = json!({"PROBE_INVOKE": "headers"}).to_string();
    let deployed = python(&sm, &server, "hosting_calls.py", &["deploy", &name, PROBE_IMAGE, "-", &env]);
    assert_eq!(deployed.code, 0, "{deployed:?}");
    runtime().block_on(async {
        let browser = Browser::start(390, 844).await;
        browser.goto(&format!("{}/endpoints", server.url)).await;
        let row = browser.text("tbody").await;
        assert!(row.contains(&name) && row.contains("InService"), "{row}");
        browser.click(&format!("a[href=\"/endpoints/{name}\"]")).await;
        browser.until("the endpoint's page", Duration::from_secs(5), "return !!document.getElementById('invoke');").await;
        assert!(browser.text("main").await.contains("AllTraffic"), "the config's variant is shown");
        browser.js("document.getElementById('content-type').value = 'text/csv'; document.getElementById('body').value = '1,2'; return true;").await;
        browser.click("#invoke").await;
        browser.until("the answer", Duration::from_secs(30), "return !!document.getElementById('response');").await;
        let answer = browser.text("#response").await;
        assert!(answer.contains("Variant: AllTraffic") && answer.contains("\"content-type\":\"text/csv\""), "{answer}");
        assert!(browser.text("#latency").await.ends_with(" ms"));
        browser.screenshot("endpoint-phone").await;
        let width = browser.js("return [window.innerWidth, document.documentElement.scrollWidth];").await;
        assert_eq!(width[0], 390, "a phone's viewport");
        assert!(count(&width[1]) <= 390, "the page fits a phone's width: {width}");
        browser.close().await;
    });
    let deleted = python(&sm, &server, "hosting_calls.py", &["delete", &name]);
    assert_eq!(deleted.code, 0, "{deleted:?}");
}
