//! The benchmarks of the issue "At scale":
//!   g. cold staging from an S3 server that waits 20 ms before every answer (the tests'
//!      server behind a delay), against the latency-bound ideal and against boto3 with 16
//!      threads; the same against moto's server when `moto` is importable;
//!   h. the job store with 100,000 jobs: the index rebuilt from the records, a
//!      ListTrainingJobs page, a full pagination (100 a page), against reading every record;
//!      DescribeTrainingJob p50/p99 with 64 clients at once against a bare HTTP server
//!      answering the same bytes;
//!   i. model.tar.gz of 100,000 small files against `tar | pigz`.

use super::{harness, row, time};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What each request costs at the far server.
const LATENCY: Duration = Duration::from_millis(20);

pub(crate) async fn upload(store: &Arc<dyn ObjectStore>, prefix: &str, count: usize, bytes: usize) {
    let payload = harness::pseudo_random(bytes, 11);
    futures::stream::iter(0..count)
        .map(|i| {
            let (store, mut bytes) = (store.clone(), payload.clone());
            if let Some(first) = bytes.first_mut() {
                *first = i as u8;
            }
            async move { store.put(&StorePath::from(format!("{prefix}/part-{i:06}.bin")), PutPayload::from(bytes)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("upload the benchmark data");
}

/// Stages `uri` cold (a cache of its own) with smlocal's defaults against `endpoint`.
async fn smlocal_stage(root: &Path, endpoint: &str, uri: &str, tag: &str) -> f64 {
    let home = root.join(format!("stage-{tag}"));
    let job = super::plan_staging_job(uri);
    let cache = smlocal::Cache::new(&home);
    let storage =
        smlocal::Storage::new(smlocal::S3Config { endpoint: Some(endpoint.into()), ..smlocal::S3Config::from_env() });
    let progress = smlocal::Progress::default();
    let t = Instant::now();
    smlocal::stage(&job, &home.join("work"), &storage, &cache, &progress).await.expect("stage");
    t.elapsed().as_secs_f64()
}

/// The raw floor: list, then `parallel` plain GETs at a time straight to files, with the
/// same client library smlocal uses (object_store), no cache, no links.
pub(crate) async fn raw_floor(
    root: &Path,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    parallel: usize,
    tag: &str,
) -> f64 {
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region(harness::REGION)
            .with_access_key_id(harness::ACCESS_KEY)
            .with_secret_access_key(harness::SECRET_KEY)
            .build()
            .expect("client"),
    );
    let dir = root.join(format!("raw-{tag}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let t = Instant::now();
    let listed: Vec<_> = store.list(Some(&StorePath::from(prefix))).try_collect().await.expect("list");
    futures::stream::iter(listed)
        .map(|meta| {
            let (store, dir) = (store.clone(), dir.clone());
            async move {
                let bytes = store.get(&meta.location).await?.bytes().await?;
                tokio::fs::write(dir.join(meta.location.filename().unwrap_or("x")), bytes)
                    .await
                    .map_err(|e| object_store::Error::Generic { store: "bench", source: Box::new(e) })
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<Vec<_>>()
        .await
        .expect("plain download");
    t.elapsed().as_secs_f64()
}

/// boto3 with `threads` threads, as `benches/boto3_download.py` does it; None without Python.
fn boto3_stage(root: &Path, endpoint: &str, bucket: &str, prefix: &str, threads: usize, tag: &str) -> Option<f64> {
    boto3_stage_with(&harness::sdk_python(), root, endpoint, bucket, prefix, threads, tag)
}

fn boto3_stage_with(
    python: &Path,
    root: &Path,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    threads: usize,
    tag: &str,
) -> Option<f64> {
    let dest = root.join(format!("boto3-{tag}"));
    std::fs::create_dir_all(&dest).ok()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/boto3_download.py");
    let out = Command::new(python)
        .arg(script)
        .args([endpoint, bucket, prefix, &dest.display().to_string(), &threads.to_string()])
        .env("AWS_ACCESS_KEY_ID", harness::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", harness::SECRET_KEY)
        .env("AWS_DEFAULT_REGION", harness::REGION)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next()?.parse().ok()
}

/// g. Staging from a server 20 ms away.
pub(crate) async fn latency_staging(root: &Path, tiny: bool) {
    let (count, bytes) = if tiny { (200, 16 << 10) } else { (1000, 1 << 20) };
    let bucket = "bench-far";
    let prefix = "data";
    let store = harness::s3().bucket(bucket).store();
    upload(&store, prefix, count, bytes).await;
    let far = harness::s3().with_latency(LATENCY);
    let in_flight = smlocal::S3Config::from_env().parallel_requests;
    for (bucket, count, bytes) in
        [(bucket, count, bytes), ("bench-far-small", if tiny { 500 } else { 10_000 }, 1 << 10)]
    {
        if bytes == 1 << 10 {
            upload(&harness::s3().bucket(bucket).store(), prefix, count, bytes).await;
        }
        let uri = format!("s3://{bucket}/{prefix}/");
        // The server's own limit: plain GETs, as many at once, with no delay.
        let floor =
            raw_floor(root, &harness::s3().endpoint, bucket, prefix, in_flight, &format!("{bucket}-near")).await;
        let near = smlocal_stage(root, &harness::s3().endpoint, &uri, &format!("{bucket}-near")).await;
        let ours = smlocal_stage(root, &far.endpoint, &uri, &format!("{bucket}-far")).await;
        // One listing page per 1,000 keys, then one GET per object (1 MiB is below ranges).
        let requests = count.div_ceil(1000) + count;
        let ideal = floor.max(requests.div_ceil(in_flight) as f64 * LATENCY.as_secs_f64());
        let mib = (count * bytes) as f64 / f64::from(1 << 20);
        println!("g. cold staging {count} x {} KiB ({in_flight} requests in flight)", bytes >> 10);
        row("   no delay: smlocal vs plain GETs (s)", near, floor, " s");
        row("   20 ms a request: vs the ideal (s)", ours, ideal, " s");
        println!(
            "{:<44} {:>10.1} MiB/s vs {:.1} MiB/s ideal, {:.0} objects/s (throughput ratio {:.2})",
            "",
            mib / ours,
            mib / ideal,
            count as f64 / ours,
            ideal / ours
        );
        match boto3_stage(root, &far.endpoint, bucket, prefix, 16, &format!("{bucket}-far")) {
            Some(boto3) => {
                row("   20 ms a request: vs boto3, 16 threads (s)", ours, boto3, " s");
                println!("{:<44} {:>10.2}x boto3's throughput", "", boto3 / ours);
            }
            None => println!("   boto3: no Python with boto3 (target/sdk-venv could not be made)"),
        }
    }
    far.stop();
    moto_staging(root, count, bytes).await;
}

/// The same against moto's server (a Python S3, slow per request like a far one), when
/// `target/moto-venv` holds it (`python3 -m venv target/moto-venv &&
/// target/moto-venv/bin/pip install 'moto[server]'`); boto3 runs from there too.
async fn moto_staging(root: &Path, count: usize, bytes: usize) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/python");
    let has_moto = Command::new(&python).args(["-c", "import moto.server"]).stderr(Stdio::null()).status();
    if !has_moto.is_ok_and(|s| s.success()) {
        println!(
            "   moto: not installed (python3 -m venv target/moto-venv; target/moto-venv/bin/pip install 'moto[server]')"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
    let mut server = Command::new(&python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto server");
    let endpoint = format!("http://127.0.0.1:{port}");
    std::thread::sleep(Duration::from_secs(3));
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name("bench-moto")
            .with_region(harness::REGION)
            .with_access_key_id(harness::ACCESS_KEY)
            .with_secret_access_key(harness::SECRET_KEY)
            .build()
            .expect("moto client"),
    );
    let made = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='{r}').create_bucket(Bucket='bench-moto', CreateBucketConfiguration={{'LocationConstraint': '{r}'}})",
                r = harness::REGION
            ),
        ])
        .env("AWS_ACCESS_KEY_ID", harness::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", harness::SECRET_KEY)
        .env("AWS_DEFAULT_REGION", harness::REGION)
        .status();
    assert!(made.is_ok_and(|s| s.success()), "create the moto bucket");
    upload(&store, "data", count, bytes).await;
    let ours = smlocal_stage(root, &endpoint, "s3://bench-moto/data/", "moto").await;
    let floor = raw_floor(root, &endpoint, "bench-moto", "data", 64, "moto").await;
    println!("   moto's server ({count} x {} KiB)", bytes >> 10);
    row("   moto: smlocal vs plain GETs, 64 at once (s)", ours, floor, " s");
    if let Some(boto3) = boto3_stage_with(&python, root, &endpoint, "bench-moto", "data", 16, "moto") {
        row("   moto: smlocal vs boto3, 16 threads (s)", ours, boto3, " s");
        println!("{:<44} {:>10.2}x boto3's throughput", "", boto3 / ours);
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// h. The store with many jobs.
pub(crate) async fn store_at_scale(tiny: bool) {
    let jobs = if tiny { 2_000 } else { 100_000 };
    let sm = harness::Smlocal::new();
    let home = sm.home.path();
    // Records as an earlier smlocal left them, with no index: the first listing builds it.
    let template = smlocal::Record::new("x", "arn", "s3://bench/out", &serde_json::Map::new());
    let mut template = serde_json::to_value(&template).expect("record");
    let written = time(|| {
        for i in 0..jobs {
            let name = format!("bench-job-{i:06}");
            let dir = home.join("jobs").join(&name);
            std::fs::create_dir_all(&dir).expect("job dir");
            template["TrainingJobName"] = serde_json::json!(name);
            template["TrainingJobArn"] =
                serde_json::json!(format!("arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"));
            template["CreationTime"] = serde_json::json!(1_700_000_000.0 + i as f64);
            template["TrainingJobStatus"] = serde_json::json!(if i % 3 == 0 { "Failed" } else { "Completed" });
            std::fs::write(dir.join("record.json"), template.to_string()).expect("record");
        }
    });
    println!("h. the job store with {jobs} jobs ({written:.1} s to write their records)");
    let store = smlocal::StateDir::new(home);
    let query = smlocal::ListQuery::default();
    let rebuild = time(|| {
        store.list_page(&query, 10).expect("list");
    });
    let scan = time(|| {
        store.list().expect("scan");
    });
    row("   index built from every record (s), vs a scan", rebuild, scan, " s");
    let server = sm.serve(&[]);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let call = |target: &'static str, body: serde_json::Value| {
        let (client, url) = (client.clone(), server.url.clone());
        let target = if target.contains('.') { target.to_string() } else { format!("SageMaker.{target}") };
        async move {
            let answer = client
                .post(&url)
                .header("x-amz-target", &target)
                .header("content-type", "application/x-amz-json-1.1")
                .body(body.to_string())
                .send()
                .await
                .expect("call");
            assert!(answer.status().is_success(), "{target}: {}", answer.status());
            serde_json::from_slice::<serde_json::Value>(&answer.bytes().await.expect("body")).expect("json")
        }
    };
    // The server's first request reads botocore's model: not a page's cost.
    call("ListTrainingJobs", serde_json::json!({})).await;
    let mut pages = Vec::new();
    for filter in [
        serde_json::json!({}),
        serde_json::json!({"StatusEquals": "Failed", "SortBy": "Name", "NameContains": "job-0"}),
    ] {
        for _ in 0..20 {
            let t = Instant::now();
            call("ListTrainingJobs", filter.clone()).await;
            pages.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let t = Instant::now();
    call("DescribeTrainingJob", serde_json::json!({"TrainingJobName": "bench-job-000007"})).await;
    let describe = t.elapsed().as_secs_f64() * 1e3;
    pages.sort_by(f64::total_cmp);
    row("   ListTrainingJobs page p50 (ms) vs Describe", pages[pages.len() / 2], describe, " ms");
    println!("{:<44} {:>10.3} ms   (p99, with and without filters)", "", pages[pages.len() * 99 / 100]);
    let t = Instant::now();
    let (mut seen, mut token) = (0usize, None::<String>);
    loop {
        let mut body = serde_json::json!({"MaxResults": 100});
        if let Some(t) = &token {
            body["NextToken"] = serde_json::json!(t);
        }
        let page = call("ListTrainingJobs", body).await;
        seen += page["TrainingJobSummaries"].as_array().map_or(0, Vec::len);
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let all = t.elapsed().as_secs_f64();
    assert_eq!(seen, jobs, "the pagination saw every job once");
    row(&format!("   all {jobs} jobs, 100 a page (s), vs a scan"), all, scan, " s");

    // GetLogEvents on a log of 10 million lines against one of 10: the first page, a page
    // from the middle (by token) and the last page.
    let lines = if tiny { 100_000 } else { 10_000_000 };
    let (long, short) = ("bench-job-000001", "bench-job-000002");
    let written = time(|| {
        write_log(&home.join("jobs").join(long).join("logs"), lines);
        write_log(&home.join("jobs").join(short).join("logs"), 10);
    });
    println!("   logs of {lines} and 10 lines written in {written:.1} s");
    let group = "/aws/sagemaker/TrainingJobs";
    let mut per_log = Vec::new();
    for job in [long, short] {
        let streams = call(
            "Logs_20140328.DescribeLogStreams",
            serde_json::json!({"logGroupName": group, "logStreamNamePrefix": format!("{job}/")}),
        )
        .await;
        let stream = streams["logStreams"][0]["logStreamName"].as_str().expect("a stream").to_string();
        let page = |extra: serde_json::Value| {
            let mut body = serde_json::json!({"logGroupName": group, "logStreamName": stream, "limit": 100});
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            body
        };
        let mut times = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let first = call("Logs_20140328.GetLogEvents", page(serde_json::json!({"startFromHead": true}))).await;
            let token = first["nextForwardToken"].as_str().unwrap_or_default().to_string();
            call("Logs_20140328.GetLogEvents", page(serde_json::json!({"nextToken": token}))).await;
            let last = call("Logs_20140328.GetLogEvents", page(serde_json::json!({}))).await;
            assert!(last["events"].as_array().is_some_and(|e| !e.is_empty()), "the last page has events");
            times.push(t.elapsed().as_secs_f64() * 1e3 / 3.0);
        }
        times.sort_by(f64::total_cmp);
        per_log.push(times[times.len() / 2]);
    }
    row(&format!("   GetLogEvents page, {lines} vs 10 lines (ms)"), per_log[0], per_log[1], " ms");

    // Describe under 64 clients, against a bare server answering the same bytes.
    let body =
        call("DescribeTrainingJob", serde_json::json!({"TrainingJobName": "bench-job-000007"})).await.to_string();
    let bare = bare_server(body).await;
    let per_client = if tiny { 50 } else { 500 };
    let ours = concurrent_latency(&client, &server.url, 64, per_client).await;
    let floor = concurrent_latency(&client, &bare, 64, per_client).await;
    row("   Describe p50, 64 clients (ms) vs bare HTTP", ours.0, floor.0, " ms");
    row("   Describe p99, 64 clients (ms) vs bare HTTP", ours.1, floor.1, " ms");
}

/// A host's log of `lines` lines as the job's log sink leaves it: `algo-1.log` and its index
/// (per line: the ms it was printed and where it starts, 16 bytes little-endian).
pub(crate) fn write_log(dir: &Path, lines: usize) {
    use std::io::Write;
    std::fs::create_dir_all(dir).expect("logs dir");
    let mut log = std::io::BufWriter::new(std::fs::File::create(dir.join("algo-1.log")).expect("log"));
    let mut index = std::io::BufWriter::new(std::fs::File::create(dir.join("algo-1.index")).expect("index"));
    let mut offset = 0u64;
    for i in 0..lines {
        let line = format!("epoch={} step={i} loss={:.6}\n", i / 1000, 1.0 / (1.0 + i as f64));
        index.write_all(&(1_700_000_000_000i64 + i as i64).to_le_bytes()).expect("index");
        index.write_all(&offset.to_le_bytes()).expect("index");
        log.write_all(line.as_bytes()).expect("log");
        offset += line.len() as u64;
    }
    log.flush().expect("log");
    index.flush().expect("index");
}

/// p50 and p99 of DescribeTrainingJob with `clients` sending at once, `per_client` each.
async fn concurrent_latency(client: &reqwest::Client, url: &str, clients: usize, per_client: usize) -> (f64, f64) {
    let tasks = (0..clients).map(|_| {
        let (client, url) = (client.clone(), url.to_string());
        tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let answer = client
                    .post(&url)
                    .header("x-amz-target", "SageMaker.DescribeTrainingJob")
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(r#"{"TrainingJobName": "bench-job-000007"}"#)
                    .send()
                    .await;
                let ok = match answer {
                    Ok(a) => a.status().is_success() && a.bytes().await.is_ok(),
                    Err(_) => false,
                };
                assert!(ok, "a Describe failed");
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times
        })
    });
    let mut times: Vec<f64> =
        futures::future::join_all(tasks).await.into_iter().flat_map(|t| t.unwrap_or_default()).collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// An HTTP server that answers every request with `body`: the floor of any API call.
async fn bare_server(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let body = bytes::Bytes::from(body);
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    url
}

/// i. model.tar.gz of many small files.
pub(crate) async fn many_small_files(root: &Path, tiny: bool) {
    let files = if tiny { 2_000 } else { 100_000 };
    let model = root.join("small-model");
    for i in 0..files {
        let dir = model.join(format!("shard-{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).expect("dir");
        }
        std::fs::write(dir.join(format!("w-{i:06}.txt")), format!("weight {i} {:.6}\n", (i as f64).sin()).repeat(16))
            .expect("file");
    }
    Command::new("tar").arg("-cf").arg("/dev/null").arg("-C").arg(&model).arg(".").status().ok();
    let out = root.join("small-ours/model.tar.gz");
    let storage = smlocal::Storage::from_env();
    let sources = vec![("algo-1".to_string(), smlocal::Beneath::folder(&model))];
    let t = Instant::now();
    smlocal::stream_archive(&storage, sources, &format!("file://{}", out.display())).await.expect("pack");
    let ours = t.elapsed().as_secs_f64();
    let floor_out = root.join("small-floor.tar.gz");
    let cmd = format!("tar -cf - -C {} . | pigz -6 > {}", model.display(), floor_out.display());
    let t = Instant::now();
    let ok = Command::new("bash").args(["-c", &cmd]).status().is_ok_and(|s| s.success());
    let floor = t.elapsed().as_secs_f64();
    if ok {
        row(&format!("i. model.tar.gz of {files} small files (s)"), ours, floor, " s");
    } else {
        println!("i. model.tar.gz of {files} small files: {ours:.3} s (no pigz for a floor)");
    }

    // One sparse file (a preallocated checkpoint, say): streamed, memory bounded.
    let size: u64 = if tiny { 256 << 20 } else { 20 << 30 };
    let sparse = root.join("sparse-model");
    std::fs::create_dir_all(&sparse).expect("dir");
    let file = std::fs::File::create(sparse.join("weights.bin")).expect("sparse file");
    file.set_len(size).expect("sparse length");
    drop(file);
    let before = rss_kib();
    let out = root.join("sparse-ours/model.tar.gz");
    let sources = vec![("algo-1".to_string(), smlocal::Beneath::folder(&sparse))];
    // The process's memory sampled while it packs: the most it held above where it began.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(rss_kib());
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };
    let t = Instant::now();
    smlocal::stream_archive(&storage, sources, &format!("file://{}", out.display())).await.expect("pack sparse");
    let ours = t.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let grew = sampler.join().unwrap_or(0).saturating_sub(before);
    let cmd = format!("tar -cf - -C {} . | pigz -6 > {}", sparse.display(), root.join("sparse-floor.tar.gz").display());
    let t = Instant::now();
    let ok = Command::new("bash").args(["-c", &cmd]).status().is_ok_and(|s| s.success());
    let floor = t.elapsed().as_secs_f64();
    let gib = size as f64 / f64::from(1 << 30);
    if ok {
        row(&format!("   one sparse file of {gib:.2} GiB (s)"), ours, floor, " s");
    }
    println!("{:<44} {:>10} MiB the most memory it added while packing", "", grew / 1024);
    let _ = std::fs::remove_dir_all(&sparse);
    let _ = std::fs::remove_file(&out);
}

/// This process's resident memory now (VmRSS), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
