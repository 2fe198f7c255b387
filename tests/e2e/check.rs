//! `smlocal check`: the sample passes; one deliberately broken image per check, each a
//! well-behaved algorithm with exactly one defect, is caught by exactly the check it targets.

use crate::harness::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

/// A well-behaved algorithm as probe steps: handles SIGTERM, explains a missing channel in
/// the failure file, writes a model, and runs long enough to be signalled and measured.
fn good(extra_before_model: &[&str], model: bool, sigterm: bool, failure_file: bool) -> Vec<String> {
    let mut steps: Vec<&str> = Vec::new();
    if sigterm {
        steps.extend(["on-term", "0"]);
    }
    steps.extend(["only-if-missing", "/opt/ml/input/data/train"]);
    if failure_file {
        steps.extend(["write", "/opt/ml/output/failure", "ClientError: the train channel is missing"]);
    }
    steps.extend(["exit", "2", "all"]);
    steps.extend(extra_before_model);
    if model {
        steps.extend(["copy", "/opt/ml/input/data/train", "/opt/ml/model/data"]);
    }
    steps.extend(["sleep", if sigterm { "2" } else { "8" }]);
    steps.into_iter().map(str::to_string).collect()
}

/// Builds `smlocal/broken-NAME` from the probe with these steps as its exec-form ENTRYPOINT.
fn image(name: &str, steps: &[String]) -> String {
    let tag = format!("smlocal/check-{name}:test");
    let mut entry = vec![PROBE.to_string()];
    entry.extend(steps.iter().cloned());
    let dockerfile = format!("FROM {PROBE_IMAGE}\nENTRYPOINT {}\n", serde_json::to_string(&entry).unwrap());
    build(&tag, &dockerfile);
    tag
}

fn build(tag: &str, dockerfile: &str) {
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), dockerfile.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `smlocal check` and returns (exit code, stdout, results by check name).
fn check(sm: &Smlocal, image: &str, extra: &[&str]) -> (i32, String, Vec<(String, String)>) {
    let out = sm.command().args(["check", image, "--stop-grace", "2"]).args(extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let results = stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            let (name, verdict) = (cells.next()?, cells.next()?);
            ["PASS", "WARN", "FAIL"].contains(&verdict).then(|| (name.to_string(), verdict.to_string()))
        })
        .collect();
    (out.status.code().unwrap_or(-1), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)), results)
}

fn with(results: &[(String, String)], verdict: &str) -> BTreeSet<String> {
    results.iter().filter(|(_, v)| v == verdict).map(|(n, _)| n.clone()).collect()
}

#[test]
fn the_sample_algorithm_passes_every_check_and_junit_counts_them() {
    let sm = Smlocal::new();
    let junit = sm.home.path().join("check.xml");
    let started = std::time::Instant::now();
    let (code, text, results) = check(&sm, SAMPLE_IMAGE, &["--junit", junit.to_str().unwrap()]);
    eprintln!("smlocal check on the sample took {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(code, 0, "{text}");
    assert_eq!(results.len(), 9, "{text}");
    assert!(with(&results, "FAIL").is_empty(), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("JUnit output is XML");
    let suite = doc.descendants().find(|n| n.has_tag_name("testsuite")).unwrap();
    assert_eq!((suite.attribute("tests"), suite.attribute("failures")), (Some("9"), Some("0")));
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("testcase")).count(), 9);
}

#[test]
fn each_broken_image_is_caught_by_exactly_the_check_it_targets() {
    let sm = Smlocal::new();
    // Small caps keep the memory-hungry image cheap: 320 MiB for one host.
    let reserve = (memory_total() - (320 << 20)).to_string();
    // "The internet" for an image that downloads at run time: a container on Docker's default
    // bridge, which a one-host job reaches and an isolated one (on its internal network) does
    // not. (No traffic leaves the machine.) Checked by the one-host runs only: the two-hosts
    // run has a network of its own, from which no other network is reachable.
    let outside = format!("smlocal-check-outside-{}", unique());
    let started = std::process::Command::new("docker")
        .args(["run", "-d", "--rm", "--name", &outside, "--label", "smlocal.test=true", "--entrypoint", PROBE])
        .args([PROBE_IMAGE, "listen-forever", "8000"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let _stop = Stop(outside.clone());
    let ip = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &outside])
        .output()
        .unwrap();
    let ip = String::from_utf8_lossy(&ip.stdout).trim().to_string();
    assert!(!ip.is_empty(), "the outside container has no address on the default bridge");
    let offline: Vec<&str> = vec![
        "only-if-hosts",
        "1",
        "only-if-unreachable",
        &ip,
        "8000",
        "write",
        "/opt/ml/output/failure",
        "network unreachable",
        "exit",
        "1",
        "all",
    ];
    let cases: Vec<(&str, String)> = vec![
        ("good", image("good", &good(&[], true, true, true))),
        (
            "train",
            image("train", &["write", "/opt/ml/output/failure", "broken on purpose", "exit", "3"].map(String::from)),
        ),
        ("model", image("model", &good(&[], false, true, true))),
        ("filesystem", image("filesystem", &good(&["write", "/var/lib/state.txt", "x"], true, true, true))),
        ("sigterm", image("sigterm", &good(&[], true, false, true))),
        ("failure", image("failure", &good(&[], true, true, false))),
        ("isolation", image("isolation", &good(&offline, true, true, true))),
        ("memory", image("memory", &good(&["alloc-share", "0.93"], true, true, true))),
        ("two-hosts", image("two-hosts", &good(&["hostname-in-hosts"], true, true, true))),
        ("pid1", {
            let tag = "smlocal/check-pid1:test".to_string();
            let steps = good(&[], true, true, true)
                .join(" ")
                .replace("ClientError: the train channel is missing", "ClientError:no-train-channel");
            // A shell-form ENTRYPOINT; the probe stands in for /bin/sh.
            build(
                &tag,
                &format!(
                    "FROM {PROBE_IMAGE}\nRUN [\"{PROBE}\", \"write\", \"/bin/.keep\", \"\", \"symlink\", \"{PROBE}\", \"/bin/sh\"]\nENTRYPOINT {PROBE} {steps}\n"
                ),
            );
            tag
        }),
    ];
    // Five images at a time: a busy engine on two cores answers slowly enough to blur timings.
    let mut runs = Vec::new();
    for wave in cases.chunks(5) {
        let threads: Vec<_> = wave
            .iter()
            .map(|(target, tag)| {
                let (target, tag, home) = (target.to_string(), tag.clone(), sm.home.path().to_path_buf());
                let reserve = reserve.clone();
                std::thread::spawn(move || {
                    let sm =
                        Smlocal { home: tempfile::Builder::new().prefix("smlocal-check-").tempdir_in(home).unwrap() };
                    (target, check(&sm, &tag, &["--memory-reserve", &reserve, "--oversubscribe"]))
                })
            })
            .collect();
        runs.extend(threads.into_iter().map(|t| t.join().unwrap()));
    }
    for (target, (code, text, results)) in runs {
        assert_eq!(results.len(), 9, "{target}: {text}");
        let failed = with(&results, "FAIL");
        match target.as_str() {
            "good" => {
                assert_eq!(code, 0, "{text}");
                assert_eq!(with(&results, "PASS").len(), 9, "the well-behaved probe passes everything: {text}");
            }
            "pid1" => {
                assert_eq!(code, 0, "{text}");
                assert!(failed.is_empty(), "{text}");
                assert_eq!(with(&results, "WARN"), BTreeSet::from(["pid1".to_string()]), "{text}");
                assert!(text.contains("shell-form ENTRYPOINT"), "{text}");
            }
            _ => {
                assert_eq!(code, 1, "{target}: {text}");
                assert_eq!(
                    failed,
                    BTreeSet::from([target.clone()]),
                    "{target} must be caught by exactly its check:\n{text}"
                );
            }
        }
    }
}

#[test]
fn only_runs_the_named_checks_and_refuses_unknown_ones() {
    let sm = Smlocal::new();
    let (code, text, results) = check(&sm, SAMPLE_IMAGE, &["--only", "pid1,model"]);
    assert_eq!(code, 0, "{text}");
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["model", "pid1"]);
    let (code, text, _) = check(&sm, SAMPLE_IMAGE, &["--only", "modle"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unknown check 'modle'"), "{text}");
    let (code, text, _) = check(&sm, "smlocal/not-built:here", &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is not on this machine"), "{text}");
}

/// Removes a container when dropped.
struct Stop(String);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// The probe's serving mode with `ENV` lines, as an image.
fn serving_image(name: &str, env: &[(&str, &str)]) -> String {
    let tag = format!("smlocal/check-serve-{name}:test");
    let lines: String = env.iter().map(|(k, v)| format!("ENV {k}={v}\n")).collect();
    build(&tag, &format!("FROM {PROBE_IMAGE}\n{lines}"));
    tag
}

#[test]
fn check_serve_passes_the_sample_model_and_catches_each_broken_server() {
    let (sm, bucket) = with_data("check-serve");
    let job = format!("check-serve-{}", unique());
    let trained = sm.train(&sample_request(&job, &bucket, 3), &[]);
    assert_eq!(trained.code, 0, "{trained:?}");
    let model = bucket.uri(&format!("output/{job}/output/model.tar.gz"));
    let junit = sm.home.path().join("serve.xml");
    let (code, text, results) =
        check(&sm, SAMPLE_IMAGE, &["--serve", "--model", &model, "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["serve", "listen", "ping", "invocations", "bad-payload", "serve-sigterm"], "{text}");
    assert_eq!(with(&results, "PASS").len(), 6, "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"6\"") && xml.contains("failures=\"0\""), "{xml}");

    // One defect each, caught by its own check.
    let exits = serving_image("exits", &[("PROBE_PING", "exit:1")]);
    let (code, text, results) = check(&sm, &exits, &["--serve"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(with(&results, "FAIL"), BTreeSet::from(["serve".to_string()]), "{text}");
    assert!(text.contains("exited with code 1"), "{text}");

    // The probe echoes whatever it gets: garbage is a 200.
    let lenient = serving_image("lenient", &[]);
    let (_, text, results) = check(&sm, &lenient, &["--serve"]);
    assert_eq!(with(&results, "FAIL"), BTreeSet::from(["bad-payload".to_string()]), "{text}");

    let stubborn = serving_image("stubborn", &[("PROBE_TERM", "ignore"), ("PROBE_INVOKE", "status:400")]);
    let (_, text, results) = check(&sm, &stubborn, &["--serve", "--only", "ping,bad-payload,serve-sigterm"]);
    assert_eq!(with(&results, "FAIL"), BTreeSet::from(["serve-sigterm".to_string()]), "{text}");
    assert_eq!(with(&results, "PASS"), BTreeSet::from(["ping".to_string(), "bad-payload".to_string()]), "{text}");

    let inward = serving_image("inward", &[("PROBE_LISTEN", "127.0.0.1")]);
    let (_, text, results) = check(&sm, &inward, &["--serve", "--only", "listen,ping"]);
    assert_eq!(with(&results, "FAIL"), BTreeSet::from(["listen".to_string(), "ping".to_string()]), "{text}");
    assert!(text.contains("one address only"), "{text}");
}

#[test]
fn the_pipe_check_wants_epoch_0_then_epoch_1_and_never_waits_on_a_reader() {
    let sm = Smlocal::new();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.csv"), "1,2\n3,4\n").unwrap();
    let request = serde_json::json!({
        "TrainingJobName": "pipe-check",
        "RoleArn": "arn:aws:iam::000000000000:role/SmlocalCheck",
        "AlgorithmSpecification": {"TrainingImage": "x", "TrainingInputMode": "Pipe"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": format!("file://{}/", data.path().display())}}}],
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 120}
    });
    let file = sm.home.path().join("pipe-request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let steps = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let two = image("pipe-two-epochs", &steps(&["pipe", "train", "2", "/opt/ml/model"]));
    let one = image("pipe-one-epoch", &steps(&["pipe", "train", "1", "/opt/ml/model"]));
    // Reads its channel as File mode would: the folder is not there, the FIFO never opened.
    let files = image("pipe-as-files", &steps(&["copy", "/opt/ml/input/data/train", "/opt/ml/model/train"]));
    let only = ["--request", file.to_str().unwrap(), "--only", "train,pipe"];
    let (_, text, results) = check(&sm, &two, &only);
    assert_eq!(results, [("train".into(), "PASS".into()), ("pipe".into(), "PASS".into())], "{text}");
    assert!(text.contains("2 epoch(s) opened, 2 read to the end"), "{text}");
    let (_, text, results) = check(&sm, &one, &only);
    assert_eq!(with(&results, "WARN"), BTreeSet::from(["pipe".to_string()]), "{text}");
    let started = std::time::Instant::now();
    let (code, text, results) = check(&sm, &files, &only);
    assert_ne!(code, 0, "{text}");
    assert_eq!(with(&results, "FAIL"), BTreeSet::from(["train".to_string(), "pipe".to_string()]), "{text}");
    assert!(text.contains("never opened /opt/ml/input/data/train_0"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
    // A File mode request has no pipe check to report.
    let (_, text, results) = check(&sm, SAMPLE_IMAGE, &["--only", "train,pipe"]);
    assert_eq!(results, [("train".into(), "PASS".into())], "{text}");
}
