//! Hosting (DESIGN §12) driven by real clients: the SageMaker SDK's deploy/predict/delete,
//! boto3's `sagemaker` and `sagemaker-runtime`, and the CLI, against real containers.

use crate::harness::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const PROBE: &str = "smlocal/probe:latest";

/// Runs `hosting_calls.py` and returns what it printed, as JSON.
fn hosting(sm: &Smlocal, server: &Server, args: &[&str]) -> Value {
    let run = python(sm, server, "hosting_calls.py", args);
    assert_eq!(run.code, 0, "hosting_calls.py {args:?}: {run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// Endpoint containers of this test's state directory (running or not).
fn endpoint_containers(sm: &Smlocal) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=smlocal.endpoint"])
        .args(["--filter", &format!("label=smlocal.home={}", sm.home.path().display())])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// Removes what a failed test may have left running.
struct Sweep<'a>(&'a Smlocal);

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        let ids = endpoint_containers(self.0);
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
        let home = format!("label=smlocal.home={}", self.0.home.path().display());
        if let Ok(out) = Command::new("docker").args(["network", "ls", "-q", "--filter", &home]).output() {
            let nets: Vec<String> =
                String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !nets.is_empty() {
                let _ = Command::new("docker").args(["network", "rm"]).args(&nets).output();
            }
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, Value> = pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Value::Object(map).to_string()
}

#[test]
fn the_sagemaker_sdk_trains_deploys_predicts_and_deletes_through_the_server() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let bucket = s3().bucket(&format!("deploy-{}", unique()));
    sample_request("unused", &bucket, 1); // uploads the sample data under data/
    let server = sm.serve(&[]);
    let run = python(&sm, &server, "sdk_deploy.py", &[SAMPLE_IMAGE, &bucket.uri("data"), &bucket.uri("out")]);
    assert_eq!(run.code, 0, "{run:?}");
    // The SDK prints its progress dots ("--!") without a newline before the next line.
    let value = |key: &str| {
        let found = run.stdout.lines().find_map(|l| l.split_once(key).map(|(_, v)| v));
        found.unwrap_or_else(|| panic!("no {key}: {run:?}")).to_string()
    };
    let model_uri = value("model_data=");
    let key = model_uri.strip_prefix(&format!("s3://{}/", bucket.name)).expect("the model is in the bucket");
    let tarball = bucket.get(key).expect("model.tar.gz");
    let model: Value = serde_json::from_slice(&file_entry(&tar_entries(&tarball), "model.json")).unwrap();
    let predictions: Vec<Vec<String>> = serde_json::from_str(&value("predictions=")).unwrap();
    let got: Vec<f64> = predictions.iter().map(|row| row[0].parse().unwrap()).collect();
    let want = [sample_prediction(&model, &[1.0, 2.0]), sample_prediction(&model, &[-1.0, 0.5])];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "the endpoint predicted {got:?}, the model says {want:?}");
    }
    assert!(run.stdout.contains("deleted"), "{run:?}");
    let endpoint = value("endpoint=");
    let after = hosting(&sm, &server, &["describe", &endpoint]);
    assert_eq!(after["error"], "ValidationException", "{after}");
    assert!(after["message"].as_str().unwrap().starts_with("Could not find endpoint"), "{after}");
    assert!(endpoint_containers(&sm).is_empty(), "delete_endpoint left containers");
    eprintln!("SDK deploy() through smlocal serve: {}s", value("deploy_seconds="));
}

#[test]
fn two_endpoints_at_once_route_round_robin_forward_only_their_headers_and_answer_in_aws_words() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let server = sm.serve(&[]);
    let (echo, pair) = (format!("hdr-{}", unique()), format!("pair-{}", unique()));
    let first = hosting(&sm, &server, &["deploy", &echo, PROBE, "-", &env(&[("PROBE_INVOKE", "headers")])]);
    let second = hosting(&sm, &server, &["deploy", &pair, PROBE, "-", &env(&[("PROBE_INVOKE", "id")]), "2"]);
    for d in [&first, &second] {
        assert_eq!(d["FirstStatus"], "Creating", "CreateEndpoint answers before the containers are up: {d}");
        assert_eq!(d["EndpointStatus"], "InService", "{d:#}");
    }
    assert_eq!(second["ProductionVariants"][0]["CurrentInstanceCount"], 2, "{second:#}");
    assert!(first["EndpointArn"].as_str().unwrap().ends_with(&format!(":endpoint/{echo}")), "{first}");

    // Two instances take turns.
    let bodies = hosting(&sm, &server, &["invoke-many", &pair, "4"]);
    let b: Vec<&str> = bodies.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(b[0] != b[1] && b[0] == b[2] && b[1] == b[3], "not round robin over two instances: {b:?}");

    // Only InvokeEndpoint's own headers reach the container; the variant comes back.
    let headers = json!({"CustomAttributes": "trace=1", "InferenceId": "req-7", "Accept": "application/json"});
    let answer = hosting(&sm, &server, &["invoke", &echo, "1,2", &headers.to_string()]);
    assert_eq!(answer["InvokedProductionVariant"], "AllTraffic", "{answer}");
    let seen: Value = serde_json::from_str(answer["Body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["content-type"], "text/csv", "{seen}");
    assert_eq!(seen["x-amzn-sagemaker-custom-attributes"], "trace=1", "{seen}");
    assert_eq!(seen["x-amzn-sagemaker-inference-id"], "req-7", "{seen}");
    assert_eq!(seen["accept"], "application/json", "{seen}");
    for private in ["authorization", "x-amz-date", "x-amz-security-token", "user-agent"] {
        assert!(seen.get(private).is_none(), "{private} reached the container: {seen}");
    }

    // More than 6 MiB is refused before any container sees it.
    let big = hosting(&sm, &server, &["invoke", &echo, &(7 << 20).to_string()]);
    assert_eq!(big["error"], "ValidationError", "{big}");
    assert!(big["message"].as_str().unwrap().contains("6291456"), "{big}");
    let unknown = hosting(&sm, &server, &["invoke", "no-such-endpoint", "1"]);
    assert_eq!(unknown["error"], "ValidationError", "{unknown}");
    assert!(unknown["message"].as_str().unwrap().starts_with("Endpoint no-such-endpoint of account "), "{unknown}");

    // Each instance's output is a CloudWatch stream of the endpoint's group.
    let streams = hosting(&sm, &server, &["logs", &pair]);
    let streams = streams.as_object().unwrap();
    assert_eq!(streams.len(), 2, "one stream per instance: {streams:?}");
    for (name, lines) in streams {
        assert!(name.starts_with("AllTraffic/i-"), "{name}");
        let lines: Vec<&str> = lines.as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(lines.contains(&"probe: invoked (3 bytes)"), "{name}: {lines:?}");
    }
    // `smlocal logs` reads the same group.
    let cli = sm.command().args(["logs", &pair]).output().unwrap();
    assert!(String::from_utf8_lossy(&cli.stdout).contains("| probe: invoked (3 bytes)"), "{cli:?}");

    let lists = hosting(&sm, &server, &["lists", &echo]);
    assert_eq!(lists["models"], json!([echo]), "{lists}");
    assert_eq!(lists["configs"], json!([echo]), "{lists}");
    assert_eq!(lists["endpoints"], json!([echo]), "{lists}");
    assert_eq!(lists["model_again"]["error"], "ValidationException", "{lists}");
    assert!(
        lists["model_again"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Cannot create already existing model \"arn:aws:sagemaker:"),
        "{lists}"
    );
    assert!(
        lists["unknown_endpoint"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Could not find endpoint \"arn:aws:sagemaker:"),
        "{lists}"
    );

    let deleted = hosting(&sm, &server, &["delete", &echo]);
    assert_eq!(deleted["after"]["error"], "ValidationException", "{deleted}");
    let gone = hosting(&sm, &server, &["delete", &pair]);
    assert_eq!(gone["after"]["error"], "ValidationException", "{gone}");
    assert!(endpoint_containers(&sm).is_empty(), "DeleteEndpoint left containers");
}

#[test]
fn a_container_that_fails_or_times_out_is_a_model_error_and_a_stream_comes_as_events() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let server = sm.serve(&["--invocation-timeout", "2"]);
    let name = format!("err-{}", unique());
    let described = hosting(&sm, &server, &["deploy", &name, PROBE, "-", &env(&[("PROBE_INVOKE", "attributes")])]);
    assert_eq!(described["EndpointStatus"], "InService", "{described:#}");
    let mode = |m: &str| json!({"CustomAttributes": format!("mode={m}")}).to_string();

    let failed = hosting(&sm, &server, &["invoke", &name, "1", &mode("status:500")]);
    assert_eq!(failed["error"], "ModelError", "{failed}");
    assert_eq!(failed["http"], 424, "{failed}");
    assert_eq!(failed["OriginalStatusCode"], 500, "{failed}");
    assert_eq!(failed["OriginalMessage"], "probe failed with 500", "{failed}");
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.starts_with("Received server error (500) from primary with message \"probe failed with 500\". See "),
        "{failed}"
    );
    assert!(
        failed["LogStreamArn"].as_str().unwrap().ends_with(&format!("log-group:/aws/sagemaker/Endpoints/{name}")),
        "{failed}"
    );
    let client = hosting(&sm, &server, &["invoke", &name, "1", &mode("status:400")]);
    assert!(client["message"].as_str().unwrap().starts_with("Received client error (400) from primary"), "{client}");

    let started = Instant::now();
    let slow = hosting(&sm, &server, &["invoke", &name, "1", &mode("sleep:8")]);
    assert_eq!(slow["error"], "ModelError", "{slow}");
    assert!(slow["message"].as_str().unwrap().contains("timed out"), "{slow}");
    assert!(started.elapsed() < Duration::from_secs(7), "the 2 s invocation timeout was not kept: {slow}");

    let streamed = hosting(&sm, &server, &["stream", &name, "mode=stream:3"]);
    assert_eq!(streamed["InvokedProductionVariant"], "AllTraffic", "{streamed}");
    let parts: String = streamed["parts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(parts, "part 1\npart 2\npart 3\n", "{streamed}");

    // Still healthy after all that; then a crash in the middle of a request.
    assert_eq!(hosting(&sm, &server, &["invoke", &name, "ok"])["Body"], "ok");
    let crashed = hosting(&sm, &server, &["invoke", &name, "1", &mode("crash")]);
    assert_eq!(crashed["error"], "ModelError", "{crashed}");
}

#[test]
fn a_container_that_never_passes_ping_or_exits_fails_the_endpoint_with_the_reason() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let server = sm.serve(&[]);
    let exits = format!("exits-{}", unique());
    let described = hosting(&sm, &server, &["deploy", &exits, PROBE, "-", &env(&[("PROBE_PING", "exit:3")])]);
    assert_eq!(described["EndpointStatus"], "Failed", "{described:#}");
    let reason = described["FailureReason"].as_str().unwrap();
    assert!(reason.contains("did not pass the ping health check"), "{reason}");
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(reason.contains("probe: exiting before serving"), "the container's last lines: {reason}");

    let started = Instant::now();
    let never = format!("never-{}", unique());
    let described = hosting(&sm, &server, &["deploy", &never, PROBE, "-", &env(&[("PROBE_PING", "never")])]);
    assert_eq!(described["EndpointStatus"], "Failed", "{described:#}");
    let reason = described["FailureReason"].as_str().unwrap();
    assert!(reason.contains("GET /ping did not answer 200 within 60 s"), "{reason}");
    assert!(started.elapsed() >= Duration::from_secs(60), "failed before the variant's 60 s");
    let invoked = hosting(&sm, &server, &["invoke", &never, "1"]);
    assert_eq!(invoked["error"], "ValidationError", "a Failed endpoint takes no requests: {invoked}");
    assert!(endpoint_containers(&sm).is_empty(), "a failed deployment left its containers");
}

#[test]
fn update_endpoint_switches_to_the_new_model_with_no_failed_request() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let server = sm.serve(&[]);
    let name = format!("upd-{}", unique());
    let id = env(&[("PROBE_INVOKE", "id")]);
    let described = hosting(&sm, &server, &["deploy", &name, PROBE, "-", &id]);
    assert_eq!(described["EndpointStatus"], "InService", "{described:#}");
    let old: Vec<String> = endpoint_containers(&sm);
    let moved = hosting(&sm, &server, &["update-under-load", &name, PROBE, "-", &id]);
    assert_eq!(moved["failures"], json!([]), "requests failed during the update: {moved:#}");
    assert_eq!(moved["during"], "Updating", "{moved}");
    assert_eq!(moved["status"], "InService", "{moved}");
    assert_eq!(moved["config"], format!("{name}-next"), "{moved}");
    let answers = moved["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "the old instance answered, then the new one, never back: {moved:#}");
    wait_until("the old instance is removed", Duration::from_secs(40), || {
        let now = endpoint_containers(&sm);
        now.len() == 1 && !old.iter().any(|o| now.contains(o))
    });
}

#[test]
fn endpoints_outlive_a_killed_server_and_one_whose_container_is_gone_is_failed() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let mut server = sm.serve(&[]);
    let name = format!("live-{}", unique());
    let described = hosting(&sm, &server, &["deploy", &name, PROBE, "-", &env(&[])]);
    assert_eq!(described["EndpointStatus"], "InService", "{described:#}");
    server.kill();
    let server = sm.serve(&[]);
    assert_eq!(hosting(&sm, &server, &["invoke", &name, "still"])["Body"], "still", "after a restart");
    assert_eq!(hosting(&sm, &server, &["describe", &name])["EndpointStatus"], "InService");
    drop(server);
    let ids = endpoint_containers(&sm);
    assert_eq!(ids.len(), 1);
    Command::new("docker").args(["rm", "-f", &ids[0]]).output().expect("docker rm");
    let server = sm.serve(&[]);
    wait_until("the lost endpoint is Failed", Duration::from_secs(20), || {
        hosting(&sm, &server, &["describe", &name])["EndpointStatus"] == "Failed"
    });
    let described = hosting(&sm, &server, &["describe", &name]);
    assert!(described["FailureReason"].as_str().unwrap().contains("is gone"), "{described:#}");
}

#[test]
fn the_cli_deploys_a_trained_model_invokes_lists_and_deletes_it() {
    let (sm, bucket) = with_data("cli-deploy");
    let _sweep = Sweep(&sm);
    let job = format!("cli-deploy-{}", unique());
    let trained = sm.train(&sample_request(&job, &bucket, 5), &[]);
    assert_eq!(trained.code, 0, "{trained:?}");
    let model = bucket.uri(&format!("output/{job}/output/model.tar.gz"));
    let name = format!("cli-{}", unique());
    let deployed = sm
        .command()
        .args(["deploy", &model, "--image", SAMPLE_IMAGE, "--name", &name, "--instance-type", "ml.c5.large"])
        .output()
        .unwrap();
    assert!(deployed.status.success(), "{deployed:?}");
    assert_eq!(String::from_utf8_lossy(&deployed.stdout).trim(), name);

    let mut invoke = sm
        .command()
        .args(["invoke", &name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(invoke.stdin.as_mut().unwrap(), b"1,2\n-1,0.5\n").unwrap();
    let answered = invoke.wait_with_output().unwrap();
    assert!(answered.status.success(), "{answered:?}");
    let tarball = bucket.get(&format!("output/{job}/output/model.tar.gz")).unwrap();
    let weights: Value = serde_json::from_slice(&file_entry(&tar_entries(&tarball), "model.json")).unwrap();
    let got: Vec<f64> = String::from_utf8_lossy(&answered.stdout).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got.len(), 2, "{answered:?}");
    assert!((got[0] - sample_prediction(&weights, &[1.0, 2.0])).abs() < 1e-9, "{got:?}");
    let bad = sm.command().args(["invoke", &name, "-"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(bad.status.success(), "an empty body is zero rows: {bad:?}");
    let mut wrong = sm
        .command()
        .args(["invoke", &name])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(wrong.stdin.as_mut().unwrap(), b"a,b\n").unwrap();
    let wrong = wrong.wait_with_output().unwrap();
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Received client error (400)"), "{wrong:?}");

    let listed = sm.command().arg("endpoints").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.lines().any(|l| l.starts_with(&name) && l.contains("InService")), "{listed}");
    let deleted = sm.command().args(["delete-endpoint", &name]).output().unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(endpoint_containers(&sm).is_empty(), "delete-endpoint left containers");
    let listed = sm.command().arg("endpoints").output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&name));
}

#[test]
fn an_uncompressed_isolated_model_prefix_is_mounted_as_is_and_an_archive_that_climbs_out_fails_the_endpoint() {
    let sm = Smlocal::new();
    let _sweep = Sweep(&sm);
    let bucket = s3().bucket(&format!("models-{}", unique()));
    bucket.put("raw/config.json", b"{\"k\": 1}");
    bucket.put("raw/sub/weights.bin", b"0123456789");
    let server = sm.serve(&[]);
    let name = format!("raw-{}", unique());
    let prefix = format!("prefix:{}", bucket.uri("raw/"));
    let attributes = env(&[("PROBE_INVOKE", "attributes")]);
    let described = hosting(&sm, &server, &["deploy", &name, PROBE, &prefix, &attributes, "1", "1", "isolated"]);
    assert_eq!(described["EndpointStatus"], "InService", "{described:#}");
    // EnableNetworkIsolation: an internal network, no published port, and still invoked.
    let ids = endpoint_containers(&sm);
    let inspect = |format: &str, what: &str| {
        let out = Command::new("docker").args(["inspect", "--format", format, what]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let network = inspect("{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", &ids[0]);
    assert_eq!(inspect("{{.Internal}}", &network), "true", "{network}");
    let bindings = inspect("{{json .HostConfig.PortBindings}}", &ids[0]);
    assert!(bindings == "null" || bindings == "{}", "a port was published: {bindings}");
    let read = |path: &str| {
        let mode = json!({"CustomAttributes": format!("mode=cat:{path}")}).to_string();
        hosting(&sm, &server, &["invoke", &name, "1", &mode])
    };
    assert_eq!(read("/opt/ml/model/sub/weights.bin")["Body"], "0123456789");
    assert_eq!(read("/opt/ml/model/config.json")["Body"], "{\"k\": 1}");

    let evil = bucket.uri("evil/model.tar.gz");
    hosting(&sm, &server, &["evil-archive", &evil]);
    let climbing = format!("evil-{}", unique());
    let described = hosting(&sm, &server, &["deploy", &climbing, PROBE, &evil, &env(&[])]);
    assert_eq!(described["EndpointStatus"], "Failed", "{described:#}");
    let reason = described["FailureReason"].as_str().unwrap();
    assert!(reason.starts_with("Failed to download model data for container"), "{reason}");
    assert!(reason.contains("'../evil'"), "{reason}");
    let written: Vec<_> = paths_below(sm.home.path()).into_iter().filter(|p| p.ends_with("evil")).collect();
    assert!(written.is_empty(), "the entry was written: {written:?}");
}
