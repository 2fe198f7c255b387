//! The inference contract as checks: one container started as `IMAGE serve` with the model
//! at /opt/ml/model and the caps of an `ml.m5.large`, its 8080 published on this machine's
//! loopback; then what SageMaker's hosting does to it, in order — wait for it to stay up,
//! see where it listens, ping it, send the sample payload and one it cannot read, and stop
//! it with SIGTERM.

use super::{Check, CheckError, CheckOptions, CheckResult, ServeOptions, Verdict, shorten};
use crate::docker::{ContainerSpec, ContainerState, Docker, HOME_LABEL};
use crate::hosting::model_data::{self, ModelData};
use crate::resources;
use crate::storage::Storage;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PORT: u16 = 8080;
const PING_LIMIT: Duration = Duration::from_secs(240);
const INVOKE_LIMIT: Duration = Duration::from_secs(60);
const SIGTERM_LIMIT: Duration = Duration::from_secs(30);

fn result(check: Check, verdict: Verdict, evidence: impl Into<String>, fix: &str, started: Instant) -> CheckResult {
    CheckResult::new(check, verdict, evidence, fix).since(started)
}

pub(super) async fn check(
    image: &str,
    docker: &Docker,
    storage: &Storage,
    options: &CheckOptions,
    serving: &ServeOptions,
    selected: &[Check],
) -> Result<Vec<CheckResult>, CheckError> {
    let scratch = tempfile::Builder::new()
        .prefix("smlocal-check-serve-")
        .tempdir()
        .map_err(|source| CheckError::Io { path: std::env::temp_dir(), source })?;
    let model_dir = scratch.path().join("model");
    let data = serving.model.clone().map_or(ModelData::None, ModelData::Archive);
    model_data::fetch(storage, &data, &model_dir).await.map_err(|e| CheckError::Request(e.to_string()))?;
    let instance =
        resources::instance("ml.m5.large", &options.settings.host).map_err(|e| CheckError::Request(e.to_string()))?;
    let limits = resources::limits(&instance, &options.settings.host, 1.0);
    let network = format!("smlocal-check-serve-{}", std::process::id());
    let labels = HashMap::from([
        ("smlocal.check".to_string(), "serve".to_string()),
        (HOME_LABEL.to_string(), scratch.path().display().to_string()),
    ]);
    docker.create_network(&network, labels.clone(), false).await?;
    let spec = ContainerSpec {
        name: format!("{network}-{}", scratch.path().file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
        hostname: "model".into(),
        alias: "model".into(),
        image: image.into(),
        entrypoint: None,
        args: vec!["serve".into()],
        env: vec!["AWS_EC2_METADATA_DISABLED=true".into()],
        binds: vec![format!("{}:/opt/ml/model:ro", model_dir.display())],
        labels,
        memory_bytes: limits.memory_bytes as i64,
        nano_cpus: limits.nano_cpus,
        cpuset: None,
        network: network.clone(),
        pids_limit: crate::run::cluster::pids_limit(instance.vcpu),
        publish: Some(PORT),
    };
    let id = docker.create_container(&spec).await?;
    let run = Run { docker, id: id.clone(), client: reqwest::Client::builder().no_proxy().build().unwrap_or_default() };
    let results = run.checks(serving, selected).await;
    let _ = docker.remove_container(&id).await;
    let _ = docker.remove_network(&network).await;
    Ok(results)
}

struct Run<'a> {
    docker: &'a Docker,
    id: String,
    client: reqwest::Client,
}

impl Run<'_> {
    async fn last_lines(&self) -> String {
        let lines = self.docker.logged_lines(&self.id, 0, Some(3)).await.unwrap_or_default();
        let text: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        if text.is_empty() { "no output".into() } else { shorten(&text.join(" | "), 200) }
    }

    async fn exited(&self) -> Option<i64> {
        match self.docker.state(&self.id).await {
            Ok(ContainerState::Stopped(exit)) => Some(exit.code),
            Ok(ContainerState::Gone) => Some(-1),
            _ => None,
        }
    }

    async fn checks(&self, serving: &ServeOptions, selected: &[Check]) -> Vec<CheckResult> {
        let wants = |c: Check| selected.contains(&c);
        let mut results = Vec::new();
        let started = Instant::now();
        let not_evaluated = |check: Check| {
            CheckResult::new(
                check,
                Verdict::Warn,
                "not evaluated: the container does not stay up (see 'serve')",
                "fix 'serve' first",
            )
        };
        if let Err(e) = self.docker.start(&self.id).await {
            let r = result(
                Check::Serve,
                Verdict::Fail,
                e.to_string(),
                "the image must start as `IMAGE serve` (exec-form ENTRYPOINT that accepts `serve`)",
                started,
            );
            results.push(r);
            results.extend(selected.iter().filter(|c| **c != Check::Serve).map(|c| not_evaluated(*c)));
            return results;
        }
        let port = self.docker.published_port(&self.id, PORT).await.ok().flatten().unwrap_or(0);
        // Up for 2 s, or healthy sooner.
        let healthy_at = self.wait_ping(port, Duration::from_secs(2)).await;
        if let Some(code) = self.exited().await {
            let evidence = format!("exited with code {code} right after start: {}", self.last_lines().await);
            if wants(Check::Serve) {
                results.push(result(Check::Serve, Verdict::Fail, evidence, "SageMaker runs `docker run IMAGE serve`: handle the `serve` argument and keep the server in the foreground", started));
            }
            results.extend(selected.iter().filter(|c| **c != Check::Serve).map(|c| not_evaluated(*c)));
            return results;
        }
        if wants(Check::Serve) {
            results.push(result(Check::Serve, Verdict::Pass, "started with `serve` and kept running", "", started));
        }
        let ping_started = Instant::now();
        // Where it listens decides whether pings can ever reach it: a server bound to the
        // container's loopback never answers from outside, so there is no point waiting.
        let mut listen = self.listen(healthy_at.is_some()).await;
        let unreachable = listen.verdict == Verdict::Fail && listen.evidence.contains("one address only");
        let healthy = match healthy_at {
            Some(at) => Some(at),
            None if unreachable => None,
            None => self.wait_ping(port, PING_LIMIT).await,
        };
        if healthy.is_some() && listen.verdict == Verdict::Fail && !unreachable {
            listen = self.listen(true).await;
        }
        if wants(Check::Listen) {
            results.push(listen);
        }
        if wants(Check::Ping) {
            results.push(match healthy {
                Some(seconds) => result(
                    Check::Ping,
                    Verdict::Pass,
                    format!("GET /ping answered 200 {seconds:.1} s after start"),
                    "",
                    ping_started,
                ),
                None => {
                    let why = match self.exited().await {
                        Some(code) => format!("the container exited with code {code}: {}", self.last_lines().await),
                        None if unreachable => {
                            "unreachable: the server listens on the container's loopback only".into()
                        }
                        None => format!("no 200 within {} s", PING_LIMIT.as_secs()),
                    };
                    result(
                        Check::Ping,
                        Verdict::Fail,
                        why,
                        "answer GET /ping with 200 once the model is loaded (each ping must answer within 2 s)",
                        ping_started,
                    )
                }
            });
        }
        if healthy.is_none() {
            results.extend(
                selected
                    .iter()
                    .filter(|c| matches!(c, Check::Invocations | Check::BadPayload | Check::ServeSigterm))
                    .map(|c| {
                        CheckResult::new(
                            *c,
                            Verdict::Warn,
                            "not evaluated: /ping never answered 200",
                            "fix 'ping' first",
                        )
                    }),
            );
            return results;
        }
        if wants(Check::Invocations) {
            results.push(self.invocations(port, serving).await);
        }
        if wants(Check::BadPayload) {
            results.push(self.bad_payload(port, serving).await);
        }
        if wants(Check::ServeSigterm) {
            results.push(self.sigterm().await);
        }
        results
    }

    /// Seconds from now until `/ping` answered 200, or `None` within `limit` (or on exit).
    async fn wait_ping(&self, port: u16, limit: Duration) -> Option<f64> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let url = format!("http://127.0.0.1:{port}/ping");
            if let Ok(answer) = self.client.get(&url).timeout(Duration::from_secs(2)).send().await
                && answer.status() == reqwest::StatusCode::OK
            {
                return Some(started.elapsed().as_secs_f64());
            }
            if self.exited().await.is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Where the container listens, from its network namespace's socket table.
    async fn listen(&self, answered: bool) -> CheckResult {
        let started = Instant::now();
        let fix = "bind 0.0.0.0:8080 (every interface): SageMaker reaches the container from outside it";
        let table = match self.docker.init_pid(&self.id).await {
            Some(pid) => std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
                .ok()
                .zip(std::fs::read_to_string(format!("/proc/{pid}/net/tcp6")).ok()),
            None => None,
        };
        let Some((v4, v6)) = table else {
            return match answered {
                true => {
                    result(Check::Listen, Verdict::Pass, "answered on 8080 from outside the container", "", started)
                }
                false => result(Check::Listen, Verdict::Fail, "nothing answered on port 8080", fix, started),
            };
        };
        let listening: Vec<String> = v4
            .lines()
            .chain(v6.lines())
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, state) = (fields.get(1)?, fields.get(3)?);
                (*state == "0A").then(|| local.to_string())
            })
            .filter(|local| local.ends_with(&format!(":{PORT:04X}")))
            .collect();
        let everywhere = listening.iter().any(|l| l.trim_start_matches('0').starts_with(':'));
        match (everywhere, listening.is_empty()) {
            (true, _) => result(Check::Listen, Verdict::Pass, "listens on 0.0.0.0:8080", "", started),
            (false, false) => result(
                Check::Listen,
                Verdict::Fail,
                format!("listens on 8080 of one address only ({})", listening.join(", ")),
                fix,
                started,
            ),
            (false, true) => result(Check::Listen, Verdict::Fail, "nothing listens on port 8080", fix, started),
        }
    }

    async fn post(&self, port: u16, body: Vec<u8>, content_type: &str) -> Result<(u16, String, f64), String> {
        let started = Instant::now();
        let answer = self
            .client
            .post(format!("http://127.0.0.1:{port}/invocations"))
            .header("content-type", content_type)
            .timeout(INVOKE_LIMIT)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {} s", INVOKE_LIMIT.as_secs())
                } else {
                    format!("the connection failed: {e}")
                }
            })?;
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        Ok((status, shorten(text.trim(), 80), started.elapsed().as_secs_f64()))
    }

    async fn invocations(&self, port: u16, serving: &ServeOptions) -> CheckResult {
        let started = Instant::now();
        let fix = "answer POST /invocations with a 2xx and the prediction (pass your own sample with --payload and --content-type)";
        match self.post(port, serving.payload.clone(), &serving.content_type).await {
            Ok((status, text, secs)) if (200..300).contains(&status) => {
                result(Check::Invocations, Verdict::Pass, format!("{status} in {secs:.2} s: {text}"), "", started)
            }
            Ok((status, text, _)) => {
                result(Check::Invocations, Verdict::Fail, format!("answered {status}: {text}"), fix, started)
            }
            Err(e) => result(Check::Invocations, Verdict::Fail, e, fix, started),
        }
    }

    async fn bad_payload(&self, port: u16, serving: &ServeOptions) -> CheckResult {
        let started = Instant::now();
        let garbage: Vec<u8> = (0..512u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let fix = "validate the payload and answer 400 with a reason: a 5xx tells clients the model is broken";
        match self.post(port, garbage, &serving.content_type).await {
            Ok((status, text, _)) if (400..500).contains(&status) => {
                result(Check::BadPayload, Verdict::Pass, format!("answered {status}: {text}"), "", started)
            }
            Ok((status, text, _)) => result(
                Check::BadPayload,
                Verdict::Fail,
                format!("answered {status} to unreadable bytes: {text}"),
                fix,
                started,
            ),
            Err(e) => {
                let exited =
                    self.exited().await.map(|c| format!("; the container exited with code {c}")).unwrap_or_default();
                result(Check::BadPayload, Verdict::Fail, format!("{e}{exited}"), fix, started)
            }
        }
    }

    async fn sigterm(&self) -> CheckResult {
        let started = Instant::now();
        if let Err(e) = self.docker.signal(&self.id, "SIGTERM").await {
            return result(Check::ServeSigterm, Verdict::Fail, e.to_string(), "", started);
        }
        while started.elapsed() < SIGTERM_LIMIT {
            if let Some(code) = self.exited().await {
                return result(
                    Check::ServeSigterm,
                    Verdict::Pass,
                    format!("exited with code {code} {:.1} s after SIGTERM", started.elapsed().as_secs_f64()),
                    "",
                    started,
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.docker.signal(&self.id, "SIGKILL").await;
        result(
            Check::ServeSigterm,
            Verdict::Fail,
            format!("still running {} s after SIGTERM; SageMaker kills it then", SIGTERM_LIMIT.as_secs()),
            "handle SIGTERM (exec-form ENTRYPOINT so PID 1 receives it; stop accepting, finish the requests in flight, exit)",
            started,
        )
    }
}
