//! `smlocal serve` driven by real clients: boto3 and the SageMaker Python SDK (v2) from a
//! virtual environment, and raw HTTP for what a well-behaved client never sends.

use crate::harness::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn training(sm: &Smlocal, name: &str) -> Value {
    wait_for(sm, name, "Training", |r| r["SecondaryStatus"] == "Training")
}

#[test]
fn boto3_creates_waits_lists_and_reads_logs_through_the_shared_store() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("boto-{}", unique()));
    bucket.put("train/a.csv", b"1\n");
    let server = sm.serve(&[]);
    let name = format!("boto-{}", unique());
    let request = sample_request(&name, &bucket, 20);

    let created = calls(&sm, &server, &["create", &request_file(&sm, &request)]);
    assert!(created["arn"].as_str().unwrap().ends_with(&format!(":training-job/{name}")), "{created}");
    assert_eq!(created["status"], "InProgress", "Create returns before the job ends: {created}");
    // The CLI reads the same store: the job is there at once.
    assert_eq!(sm.describe(&name)["TrainingJobArn"], created["arn"]);

    let described = calls(&sm, &server, &["wait", &name]);
    assert_eq!(described["TrainingJobStatus"], "Completed", "{described:#}");
    let model = bucket.uri(&format!("output/{name}/output/model.tar.gz"));
    assert_eq!(described["ModelArtifacts"]["S3ModelArtifacts"], model);
    assert!(bucket.get(&format!("output/{name}/output/model.tar.gz")).is_some(), "no {model}");
    assert_eq!(described["HyperParameters"]["epochs"], "20", "Describe echoes the request");
    assert_eq!(described["ResourceConfig"]["InstanceCount"], 1);
    assert_eq!(
        statuses(&described),
        ["Starting", "Downloading", "Training", "Uploading", "Completed"],
        "{described:#}"
    );

    let logs = calls(&sm, &server, &["logs", &name]);
    assert_eq!(logs["nextToken"], false, "no token for one stream: {logs}");
    let streams = logs["streams"].as_object().unwrap();
    assert_eq!(streams.len(), 1, "{logs}");
    let (stream, read) = streams.iter().next().unwrap();
    assert!(stream.starts_with(&format!("{name}/algo-1-")), "{stream}");
    let events: Vec<&str> = read["events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let cli = sm.command().args(["logs", &name]).output().expect("smlocal logs");
    let cli_lines: Vec<String> =
        String::from_utf8_lossy(&cli.stdout).lines().map(|l| l.trim_start_matches("algo-1 | ").to_string()).collect();
    assert_eq!(events, cli_lines, "the API and the CLI show the same lines");
    assert!(events.iter().any(|e| e.starts_with("epoch=20 ")), "{events:?}");
    assert!(read["pages"].as_u64().unwrap() > 2, "7 events per page: {read}");

    // Jobs the CLI ran are listed by the API, page by page.
    for i in 0..3 {
        let run = sm.train(&probe_request(&format!("{name}-cli-{i}"), &bucket, &["train"]), &[]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    let listed = calls(&sm, &server, &["list", &name, "2"]);
    let expected: Vec<String> =
        std::iter::once(name.clone()).chain((0..3).map(|i| format!("{name}-cli-{i}"))).collect();
    assert_eq!(listed["names"], json!(expected), "{listed}");
    assert_eq!(listed["pages"], json!([2, 2]), "{listed}");

    let unknown = calls(&sm, &server, &["describe", "no-such-job"]);
    assert_eq!(
        unknown,
        json!({"error": "ValidationException", "message": "Requested resource not found.", "http": 400})
    );
    let stop = calls(&sm, &server, &["stop", &name]);
    assert_eq!(stop["error"], "ValidationException", "{stop}");
}

#[test]
fn the_sagemaker_sdk_estimator_fits_through_the_server() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("sdk-{}", unique()));
    sample_request("unused", &bucket, 1); // uploads the sample data under data/
    let server = sm.serve(&[]);
    let run = python(&sm, &server, "sdk_fit.py", &[SAMPLE_IMAGE, &bucket.uri("data"), &bucket.uri("sdk-output")]);
    assert_eq!(run.code, 0, "{run:?}");
    let printed = format!("{}{}", run.stdout, run.stderr);
    for line in ["Starting - ", "Downloading - Downloading input data", "Completed - Training job completed"] {
        assert!(printed.contains(line), "the SDK did not print '{line}': {run:?}");
    }
    assert!(run.stdout.contains("epoch=30 train_mse="), "the SDK printed the job's logs: {run:?}");
    let value = |key: &str| {
        run.stdout.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key}: {run:?}")).to_string()
    };
    let job = value("job_name=");
    let model = value("model_data=");
    assert_eq!(model, bucket.uri(&format!("sdk-output/{job}/output/model.tar.gz")));
    let tarball = bucket.get(&format!("sdk-output/{job}/output/model.tar.gz")).expect("the model the SDK points at");
    assert!(tar_entries(&tarball).iter().any(|(path, _)| path == "model.json"));
    let record = sm.describe(&job);
    assert_eq!(record["TrainingJobStatus"], "Completed");
    assert!(record["FinalMetricDataList"].as_array().is_some_and(|m| !m.is_empty()), "{record:#}");
    eprintln!("Estimator.fit through smlocal serve: {}s", value("fit_seconds="));
}

#[test]
fn concurrent_creates_queue_and_stops_reach_queued_and_running_jobs() {
    let (sm, bucket) = with_data("queue");
    let server = sm.serve(&["--max-parallel", "1"]);
    let name = format!("queue-{}", unique());
    let request = probe_request(&name, &bucket, &["on-term", "0", "sleep", "120"]);
    let created = calls(&sm, &server, &["create-many", &request_file(&sm, &request), "3"]);
    let results = created.as_array().unwrap();
    let refused: Vec<&Value> = results.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!(refused.len(), 1, "one of the two creates of {name}-0 must lose: {created:#}");
    assert_eq!(refused[0]["error"], "ResourceInUse", "{created:#}");
    let names: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();

    // One slot: one job trains, the others wait, Pending.
    let running = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            names.iter().find(|n| sm.describe(n)["SecondaryStatus"] == "Training").cloned()
        })
        .expect("a job started training");
    let queued: Vec<&String> = names.iter().filter(|n| **n != running).collect();
    for q in &queued {
        let record = sm.describe(q);
        assert_eq!(record["SecondaryStatus"], "Pending", "{record:#}");
        assert_eq!(record["TrainingJobStatus"], "InProgress");
    }

    // Stops through the API and through the CLI reach queued jobs without running them.
    assert_eq!(calls(&sm, &server, &["stop", queued[0]]), json!({}));
    let out = sm.command().args(["stop", queued[1]]).output().expect("smlocal stop");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for q in &queued {
        let record = wait_for(&sm, q, "Stopped", |r| r["TrainingJobStatus"] == "Stopped");
        assert_eq!(statuses(&record), ["Starting", "Pending", "Stopped"], "{record:#}");
    }
    assert_eq!(sm.describe(&running)["SecondaryStatus"], "Training");
    assert_eq!(calls(&sm, &server, &["stop", &running]), json!({}));
    let record = calls(&sm, &server, &["wait", &running]);
    assert_eq!(record["TrainingJobStatus"], "Stopped", "{record:#}");
    for n in &names {
        assert_eq!(leftovers(n), (String::new(), String::new()), "{n} left Docker objects");
    }
}

#[test]
fn a_server_killed_mid_job_is_cleaned_up_by_the_next_one() {
    let (sm, bucket) = with_data("restart");
    let mut first = sm.serve(&[]);
    let name = format!("restart-{}", unique());
    let created =
        calls(&sm, &first, &["create", &request_file(&sm, &probe_request(&name, &bucket, &["sleep", "120"]))]);
    assert!(created.get("arn").is_some(), "{created}");
    training(&sm, &name);
    first.kill();
    assert!(!leftovers(&name).0.is_empty(), "the container outlives a killed server");

    let mut second = sm.serve(&[]);
    let record = calls(&sm, &second, &["describe", &name]);
    assert_eq!(record["TrainingJobStatus"], "Failed", "{record:#}");
    assert!(record["FailureReason"].as_str().unwrap().contains("ended before the job did"), "{record:#}");
    assert_eq!(leftovers(&name), (String::new(), String::new()), "the new server removed the containers");

    // The new server runs jobs, and Ctrl-C stops them before it exits.
    let next = format!("{name}-next");
    let request = probe_request(&next, &bucket, &["on-term", "0", "sleep", "120"]);
    assert!(calls(&sm, &second, &["create", &request_file(&sm, &request)]).get("arn").is_some());
    training(&sm, &next);
    assert!(second.interrupt().success());
    assert_eq!(sm.describe(&next)["TrainingJobStatus"], "Stopped");
    assert_eq!(leftovers(&next), (String::new(), String::new()));
}

#[test]
fn script_mode_fetches_the_submit_directory_only_when_credentials_are_passed() {
    script_image();
    let (sm, bucket) = with_data("script");
    bucket.put("train/a.csv", b"1\n2\n3\n");
    let data = bucket.uri("");
    let data = data.trim_end_matches('/');
    let server = sm.serve(&["--pass-aws-credentials"]);
    let run = python(&sm, &server, "sdk_script_mode.py", &[SCRIPT_IMAGE, data, &bucket.uri("out")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("script mode: 3 rows, scaled total=12.0"), "{run:?}");
    let job = run.stdout.lines().find_map(|l| l.strip_prefix("job_name=")).expect("job name").to_string();
    // The test S3 server is on 127.0.0.1; the container reached it through the relay.
    let record = sm.describe(&job);
    let submitted = record["HyperParameters"]["sagemaker_submit_directory"].as_str().unwrap();
    assert_eq!(submitted, format!("\"{}\"", bucket.uri(&format!("{job}/source/sourcedir.tar.gz"))));
    // The SDK prints its last status without a newline, so the log line may follow it.
    let fetched = run.stdout.lines().find_map(|l| l.split_once("fetching s3://")).expect("the fetch line").1;
    assert!(!fetched.contains("127.0.0.1") && fetched.contains("from http://"), "{fetched}");
    let tarball = bucket.get(&format!("out/{job}/output/model.tar.gz")).expect("model.tar.gz");
    let model: Value = serde_json::from_slice(&file_entry(&tar_entries(&tarball), "model.json")).unwrap();
    assert_eq!(model, json!({"total": 12.0, "helper": "shipped with source_dir"}));
    drop(server);

    // Several hosts get a network of their own, and the relay sits on its gateway; the same
    // code, run by `smlocal train`, on two hosts.
    let mut two = request(&format!("script-two-{}", unique()), SCRIPT_IMAGE, &bucket);
    two["ResourceConfig"]["InstanceCount"] = json!(2);
    two["HyperParameters"] =
        json!({"sagemaker_submit_directory": submitted, "sagemaker_program": "\"train.py\"", "scale": "3"});
    let run = sm.train(&two, &["--pass-aws-credentials"]);
    assert_eq!(run.code, 0, "{run:?}");
    for host in ["algo-1", "algo-2"] {
        assert!(run.stdout.contains(&format!("{host} | script mode: 3 rows, scaled total=18.0")), "{run:?}");
    }

    // Without the opt-in no credentials reach the container, and the fetch fails saying so.
    let server = sm.serve(&[]);
    let run = python(&sm, &server, "sdk_script_mode.py", &[SCRIPT_IMAGE, data, &bucket.uri("out")]);
    assert_ne!(run.code, 0, "{run:?}");
    let job = run.stderr.lines().find_map(|l| l.split_once("Creating training-job with name: ")).expect("job").1;
    let reason = sm.describe(job.trim())["FailureReason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("AlgorithmError: ClientError: cannot fetch")
            && reason.contains("Unable to locate credentials"),
        "{reason}"
    );
}

/// One HTTP/1.1 exchange: the status code and the body as JSON.
fn post(server: &Server, target: Option<&str>, body: &str) -> (u16, Value) {
    let address = server.url.trim_start_matches("http://").to_string();
    post_as(server, &address, None, target, body)
}

/// [`post`] with a `Host` and an `Origin` of the caller's choosing, as a web page would send.
fn post_as(server: &Server, host: &str, origin: Option<&str>, target: Option<&str>, body: &str) -> (u16, Value) {
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let target = target.map(|t| format!("X-Amz-Target: {t}\r\n")).unwrap_or_default();
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/x-amz-json-1.1\r\n{target}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[test]
fn bad_requests_get_aws_errors_that_say_what_is_wrong() {
    let (sm, bucket) = with_data("badreq");
    let server = sm.serve(&[]);
    let (status, body) = post(&server, Some("SageMaker.DescribeTrainingJob"), "{\"TrainingJobName\": ");
    assert_eq!((status, body["__type"].as_str()), (400, Some("SerializationException")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("not valid JSON"), "{body}");
    let (status, body) = post(&server, None, "{}");
    assert_eq!((status, body["__type"].as_str()), (400, Some("MissingAction")), "{body}");
    let (status, body) = post(&server, Some("SageMaker.CreateProcessingJob"), "{}");
    assert_eq!((status, body["__type"].as_str()), (400, Some("UnknownOperationException")), "{body}");

    // What botocore would refuse before sending, the server refuses too, in AWS's words.
    let mut request = probe_request(&format!("badreq-{}", unique()), &bucket, &["train"]);
    request.as_object_mut().unwrap().remove("RoleArn");
    let (status, body) = post(&server, Some("SageMaker.CreateTrainingJob"), &request.to_string());
    assert_eq!((status, body["__type"].as_str()), (400, Some("ValidationException")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("RoleArn"), "{body}");
    request["RoleArn"] = json!("arn:aws:iam::123456789012:role/R");
    request["ResourceConfig"]["InstanceCount"] = json!(0);
    let (_, body) = post(&server, Some("SageMaker.CreateTrainingJob"), &request.to_string());
    assert!(body["message"].as_str().unwrap().starts_with("1 validation error detected"), "{body}");
    request["ResourceConfig"]["InstanceCount"] = json!(1);
    request["AlgorithmSpecification"]["TrainingImage"] = json!("smlocal/not-built:latest");
    let (_, body) = post(&server, Some("SageMaker.CreateTrainingJob"), &request.to_string());
    assert!(body["message"].as_str().unwrap().contains("smlocal/not-built:latest"), "{body}");
    let (status, body) = post(
        &server,
        Some("Logs_20140328.GetLogEvents"),
        &json!({"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamName": "nope/algo-1-1"}).to_string(),
    );
    assert_eq!((status, body["__type"].as_str()), (400, Some("ResourceNotFoundException")), "{body}");
}

#[test]
fn a_web_page_cannot_drive_the_server_and_file_uris_need_an_allowed_root() {
    let (sm, bucket) = with_data("rebind");
    let server = sm.serve(&[]);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let list = Some("SageMaker.ListTrainingJobs");
    // DNS rebinding: the page's own name reaches 127.0.0.1, and the browser sends it as Host.
    let (status, body) = post_as(&server, &format!("attacker.example:{port}"), None, list, "{}");
    assert_eq!((status, body["__type"].as_str()), (403, Some("AccessDeniedException")), "{body}");
    // A page on another origin posting to localhost.
    let (status, body) = post_as(&server, &format!("localhost:{port}"), Some("https://attacker.example"), list, "{}");
    assert_eq!((status, body["__type"].as_str()), (403, Some("AccessDeniedException")), "{body}");
    // This machine's clients by any of its loopback names are served.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = post_as(&server, &host, None, list, "{}");
        assert_eq!(status, 200, "{host}: {body}");
    }

    // file:// channels name folders of this machine: refused unless under an allowed root.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.csv"), "1\n").unwrap();
    let mut request =
        probe_request(&format!("fileroot-{}", unique()), &bucket, &["cat", "/opt/ml/input/data/train/a.csv"]);
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] =
        json!(format!("file://{}/", data.path().display()));
    let create = Some("SageMaker.CreateTrainingJob");
    let (status, body) = post(&server, create, &request.to_string());
    assert_eq!((status, body["__type"].as_str()), (400, Some("ValidationException")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("--allow-file-root"), "{body}");
    drop(server);
    let allowed = data.path().display().to_string();
    let server = sm.serve(&["--allow-file-root", &allowed]);
    let (status, body) = post(&server, create, &request.to_string());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn idle_and_half_open_connections_are_closed_and_never_hold_the_server() {
    let (sm, _bucket) = with_data("idle");
    let server = sm.serve(&[]);
    let address = server.url.trim_start_matches("http://").to_string();
    // 300 connections that never send a request, and one that sends half a head: more than
    // the server serves at once.
    let mut idle: Vec<std::net::TcpStream> =
        (0..300).map(|_| std::net::TcpStream::connect(&address).expect("connect")).collect();
    let mut half = std::net::TcpStream::connect(&address).expect("connect");
    write!(half, "POST / HTTP/1.1\r\nHost: {address}\r\n").expect("send");
    // The server closes them within its header timeout (10 s); a real client is served then.
    let started = std::time::Instant::now();
    let (status, body) = post(&server, Some("SageMaker.ListTrainingJobs"), "{}");
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "served in {:?}", started.elapsed());
    std::thread::sleep(std::time::Duration::from_secs(12));
    // Closed by the server: end of stream (or a reset), not a read that times out.
    let closed = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    };
    assert!(closed(&mut half), "a half-sent request was left open");
    let first = idle.iter_mut().take(20).map(closed).filter(|c| *c).count();
    assert_eq!(first, 20, "idle connections were left open");
}

#[test]
fn with_require_signature_only_requests_signed_by_an_accepted_key_pair_are_served() {
    use std::os::unix::fs::PermissionsExt;
    let (sm, bucket) = with_data("signed");
    let server = sm.serve(&["--require-signature"]);
    let file = sm.home.path().join("serve-credentials");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "readable by its user only");
    let text = std::fs::read_to_string(&file).unwrap();
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_start_matches([' ', '=']).to_string()).unwrap()
    };
    let (key, secret) = (value("aws_access_key_id"), value("aws_secret_access_key"));

    // boto3 with the server's key pair, through the file as an AWS profile.
    let file_text = file.display().to_string();
    let profile = [("AWS_SHARED_CREDENTIALS_FILE", file_text.as_str()), ("AWS_PROFILE", "smlocal")];
    let unset = [("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")];
    let env: Vec<(&str, &str)> = profile.iter().chain(&unset).copied().collect();
    let name = format!("signed-{}", unique());
    let request = request_file(&sm, &probe_request(&name, &bucket, &["train"]));
    let created = python_with(&sm, &server, "boto3_calls.py", &["create", &request], &env);
    assert_eq!(created.code, 0, "{created:?}");
    assert!(created.stdout.contains("\"arn\""), "{created:?}");
    // boto3 with this process's own AWS key pair (what the SDK signs S3 calls with too).
    let own = calls(&sm, &server, &["describe", &name]);
    assert_eq!(own["TrainingJobName"], name.as_str(), "{own:#}");

    // A browser cannot sign: the console is off, and says why, rather than a way around.
    let address = server.url.trim_start_matches("http://");
    let mut page = String::new();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET /jobs/{name} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    std::io::Read::read_to_string(&mut stream, &mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 403") && page.contains("--require-signature"), "{page}");

    // A wrong secret, an unknown key, and no signature at all.
    let wrong = [("AWS_ACCESS_KEY_ID", key.as_str()), ("AWS_SECRET_ACCESS_KEY", "not-the-secret")];
    let refused = python_with(&sm, &server, "boto3_calls.py", &["describe", &name], &wrong);
    assert!(refused.stdout.contains("InvalidSignatureException"), "{refused:?}");
    let stranger = [("AWS_ACCESS_KEY_ID", "AKIDSTRANGER"), ("AWS_SECRET_ACCESS_KEY", secret.as_str())];
    let refused = python_with(&sm, &server, "boto3_calls.py", &["describe", &name], &stranger);
    assert!(refused.stdout.contains("UnrecognizedClientException"), "{refused:?}");
    let (status, body) = post(&server, Some("SageMaker.ListTrainingJobs"), "{}");
    assert_eq!((status, body["__type"].as_str()), (403, Some("MissingAuthenticationTokenException")), "{body}");

    // The runtime (rest-json, signed for `sagemaker` too) on the same port, the same rules.
    let signed = python(&sm, &server, "hosting_calls.py", &["invoke", "no-such-endpoint", "1"]);
    assert!(signed.stdout.contains("\"ValidationError\""), "a signed invocation reaches the runtime: {signed:?}");
    let forged = python_with(&sm, &server, "hosting_calls.py", &["invoke", "no-such-endpoint", "1"], &wrong);
    assert!(forged.stdout.contains("InvalidSignatureException"), "{forged:?}");
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /endpoints/x/invocations HTTP/1.1\r\nHost: {address}\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 403") && response.contains("MissingAuthenticationTokenException"),
        "{response}"
    );
    wait_for(&sm, &name, "finished", |r| r["TrainingJobStatus"] != "InProgress");
}

#[test]
fn out_of_file_descriptors_the_server_backs_off_warns_rarely_and_recovers() {
    let sm = Smlocal::new();
    let cmd = sm.command();
    let log = sm.home.path().join("serve.log");
    // 64 files, hard limit too: smlocal cannot raise it.
    let mut child = std::process::Command::new("bash")
        .args(["-c", "ulimit -Hn 64 -Sn 64 && exec \"$0\" serve --port 0 2>\"$1\""])
        .arg(cmd.get_program())
        .arg(&log)
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let address = first.rsplit("http://").next().unwrap_or_default().to_string();
    assert!(address.starts_with("127.0.0.1:"), "{first}");
    // Far more connections than descriptors: accepting fails with EMFILE until some close.
    let held: Vec<_> = (0..100).filter_map(|_| std::net::TcpStream::connect(&address).ok()).collect();
    std::thread::sleep(Duration::from_secs(3));
    let warnings = std::fs::read_to_string(&log).unwrap_or_default().matches("cannot accept connections").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings in 3 s (a spinning loop writes millions)");
    drop(held);
    // The idle ones are closed by the header timeout at the latest; then it answers again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::net::TcpStream::connect(&address).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            response.starts_with("HTTP/1.1 200").then_some(())
        });
        if answered.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the server never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}
