//! The hosting commands: `deploy` (CreateModel + CreateEndpointConfig + CreateEndpoint in one,
//! waiting until the endpoint is in service), `invoke`, `endpoints` and `delete-endpoint`,
//! over the same state directory `smlocal serve` uses.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use smlocal::{Docker, Hosting, HostingConfig, StateDir, Storage};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub(super) struct DeployArgs {
    /// The model: a local `model.tar.gz`, a `file://` or `s3://` URI of one.
    model: String,
    /// The serving image (run as `IMAGE serve`, listening on 8080).
    #[arg(long)]
    image: String,
    #[arg(long, default_value = "ml.m5.large")]
    instance_type: String,
    /// Containers behind the endpoint (requests go round robin).
    #[arg(long, value_name = "N", default_value_t = 1)]
    instance_count: u32,
    /// The endpoint's name (and its model's and configuration's); default: the image's name
    /// and the time, as the SageMaker SDK names them.
    #[arg(long)]
    name: Option<String>,
    /// An environment variable for the container, `NAME=VALUE` (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Seconds the container has to answer `GET /ping` with 200.
    #[arg(long, value_name = "SECS", default_value_t = 240)]
    startup_timeout: u64,
}

#[derive(clap::Args)]
pub(super) struct InvokeArgs {
    /// The endpoint.
    name: String,
    /// The request body: a file, or `-` for standard input.
    #[arg(default_value = "-")]
    body: String,
    #[arg(long, default_value = "text/csv")]
    content_type: String,
    #[arg(long)]
    accept: Option<String>,
}

async fn hosting() -> Result<Arc<Hosting>> {
    let storage = Storage::from_env();
    let settings = super::settings(None, false, &storage)?;
    let docker = Docker::connect().await?;
    Ok(Hosting::new(StateDir::from_env(), docker, storage, HostingConfig::new(settings)))
}

/// An operation's answer, or its error as the API words it.
async fn call(hosting: &Arc<Hosting>, operation: &str, body: Value) -> Result<Value> {
    match hosting.call(operation, body).await {
        Ok(answer) => answer.with_context(|| operation.to_string()),
        Err(_) => bail!("{operation} is not a hosting operation"),
    }
}

/// The image's last path segment without its tag: `smlocal/linear-regression:latest` →
/// `linear-regression`.
fn base_name(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let bare = last.split(':').next().unwrap_or(last);
    let clean: String = bare.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    clean.trim_matches('-').to_string()
}

pub(super) async fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let hosting = hosting().await?;
    let model_url = if args.model.contains("://") {
        args.model.clone()
    } else {
        let path = std::fs::canonicalize(&args.model).with_context(|| format!("the model file '{}'", args.model))?;
        format!("file://{}", path.display())
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => {
            let base = base_name(&args.image);
            // EndpointName allows 63 characters; the SDK's suffix takes 24.
            let unique = smlocal::unique_name(&base, time::OffsetDateTime::now_utc());
            unique.chars().take(63).collect()
        }
    };
    let mut environment = serde_json::Map::new();
    for pair in &args.env {
        let (k, v) = pair.split_once('=').with_context(|| format!("--env '{pair}' is not NAME=VALUE"))?;
        environment.insert(k.into(), json!(v));
    }
    call(
        &hosting,
        "CreateModel",
        json!({
            "ModelName": name,
            "ExecutionRoleArn": "arn:aws:iam::000000000000:role/smlocal",
            "PrimaryContainer": {"Image": args.image, "ModelDataUrl": model_url, "Environment": environment},
        }),
    )
    .await?;
    call(
        &hosting,
        "CreateEndpointConfig",
        json!({
            "EndpointConfigName": name,
            "ProductionVariants": [{
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": args.instance_type,
                "InitialInstanceCount": args.instance_count,
                "ContainerStartupHealthCheckTimeoutInSeconds": args.startup_timeout,
            }],
        }),
    )
    .await?;
    call(&hosting, "CreateEndpoint", json!({"EndpointName": name, "EndpointConfigName": name})).await?;
    eprintln!("smlocal: endpoint {name} is Creating ({} × {})", args.instance_count, args.instance_type);
    let interrupted = tokio::select! {
        () = hosting.settle() => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        hosting.shut_down().await;
        eprintln!("smlocal: interrupted; the endpoint {name} is Failed (smlocal delete-endpoint {name})");
        return Ok(ExitCode::from(130));
    }
    let described = call(&hosting, "DescribeEndpoint", json!({"EndpointName": name})).await?;
    let status = described["EndpointStatus"].as_str().unwrap_or_default();
    if status != "InService" {
        eprintln!(
            "smlocal: endpoint {name} is {status}: {}",
            described["FailureReason"].as_str().unwrap_or("no reason recorded")
        );
        eprintln!("  its logs: smlocal logs {name}; remove it: smlocal delete-endpoint {name}");
        return Ok(ExitCode::from(1));
    }
    println!("{name}");
    eprintln!("smlocal: endpoint {name} is InService");
    eprintln!("  invoke it:   smlocal invoke {name} FILE --content-type text/csv");
    eprintln!("  through the API (smlocal serve on PORT): POST http://127.0.0.1:PORT/endpoints/{name}/invocations");
    for (variant, instance, url) in hosting.instance_urls(&name) {
        eprintln!("  {variant}/{instance} directly: POST {url}/invocations");
    }
    eprintln!("  its logs:    smlocal logs {name}; remove it: smlocal delete-endpoint {name}");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn invoke(args: InvokeArgs) -> Result<ExitCode> {
    let hosting = hosting().await?;
    let mut body = Vec::new();
    if args.body == "-" {
        std::io::stdin().read_to_end(&mut body).context("reading the request body from standard input")?;
    } else {
        body = std::fs::read(&args.body).with_context(|| format!("reading the request body '{}'", args.body))?;
    }
    match hosting.invoke(&args.name, Some(&args.content_type), args.accept.as_deref(), body.into()).await {
        Ok((_, variant, answer)) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&answer)?;
            out.flush()?;
            tracing::debug!("answered by variant {variant}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("smlocal: error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub(super) async fn endpoints() -> Result<ExitCode> {
    let hosting = hosting().await?;
    let listed =
        call(&hosting, "ListEndpoints", json!({"MaxResults": 100, "SortBy": "Name", "SortOrder": "Ascending"})).await?;
    let rows = listed["Endpoints"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("smlocal: no endpoints (make one with smlocal deploy MODEL.tar.gz --image IMAGE)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<40} {:<10} {:<25} INSTANCES", "NAME", "STATUS", "CREATED");
    for row in rows {
        let name = row["EndpointName"].as_str().unwrap_or_default();
        let described = call(&hosting, "DescribeEndpoint", json!({"EndpointName": name})).await.unwrap_or_default();
        let instances: u64 = described["ProductionVariants"]
            .as_array()
            .map(|v| v.iter().filter_map(|v| v["CurrentInstanceCount"].as_u64()).sum())
            .unwrap_or(0);
        let created = row["CreationTime"]
            .as_f64()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok())
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        println!("{name:<40} {:<10} {created:<25} {instances}", row["EndpointStatus"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes the endpoint and waits until its containers are gone; the configuration and model
/// `smlocal deploy` made under the same name go with it (others stay, as on AWS).
pub(super) async fn delete_endpoint(name: &str) -> Result<ExitCode> {
    let hosting = hosting().await?;
    let described = call(&hosting, "DescribeEndpoint", json!({"EndpointName": name})).await?;
    call(&hosting, "DeleteEndpoint", json!({"EndpointName": name})).await?;
    hosting.settle().await;
    if described["EndpointConfigName"].as_str() == Some(name) {
        let config = call(&hosting, "DescribeEndpointConfig", json!({"EndpointConfigName": name})).await.ok();
        let _ = call(&hosting, "DeleteEndpointConfig", json!({"EndpointConfigName": name})).await;
        let models: Vec<String> = config
            .iter()
            .flat_map(|c| c["ProductionVariants"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v["ModelName"].as_str().map(str::to_string))
            .collect();
        if models.iter().any(|m| m == name) {
            let _ = call(&hosting, "DeleteModel", json!({"ModelName": name})).await;
        }
    }
    eprintln!("smlocal: endpoint {name} deleted");
    Ok(ExitCode::SUCCESS)
}

/// `smlocal logs NAME` for an endpoint: every instance's lines, `stream | line`; with
/// `follow`, new lines until the endpoint is deleted.
pub(super) async fn endpoint_logs(name: &str, follow: bool) -> Result<ExitCode> {
    let hosting = hosting().await?;
    let mut printed = 0;
    loop {
        let lines = hosting.endpoint_logs(name).await?;
        let mut out = std::io::stdout().lock();
        for (stream, line) in lines.iter().skip(printed) {
            writeln!(out, "{stream} | {line}")?;
        }
        out.flush()?;
        printed = lines.len();
        if !follow || !hosting.has_endpoint(name) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_image() {
        assert_eq!(base_name("smlocal/linear-regression:latest"), "linear-regression");
        assert_eq!(base_name("123.dkr.ecr.us-east-1.amazonaws.com/my_model:1.0"), "my-model");
    }
}

#[derive(clap::Args)]
pub(super) struct TransformArgs {
    /// The CreateTransformJob request file, or `-` for standard input.
    request: String,
    /// Append `-YYYY-MM-DD-HH-MM-SS-mmm` to `TransformJobName`, as the SageMaker SDK does.
    #[arg(long)]
    unique_name: bool,
}

/// `smlocal transform REQUEST.json`: the job in the foreground, its containers' lines
/// prefixed by instance, a progress line (objects, records, bytes), Ctrl-C stops it.
pub(super) async fn transform(args: TransformArgs) -> Result<ExitCode> {
    use std::sync::atomic::Ordering;
    let text = super::read_request(&args.request)?;
    let mut request: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: the request is not valid JSON", args.request))?;
    if args.unique_name
        && let Some(name) = request.get("TransformJobName").and_then(Value::as_str)
    {
        let unique = smlocal::unique_name(name, time::OffsetDateTime::now_utc());
        request["TransformJobName"] = json!(unique);
    }
    let hosting = hosting().await?;
    let name = hosting.admit_transform_job(&request)?;
    eprintln!("smlocal: starting transform job {name}");
    let progress = Arc::new(smlocal::TransformProgress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let sink: smlocal::LogSink = Arc::new(|instance: &str, line: &str| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{instance} | {line}");
    });
    let reporter = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                eprintln!(
                    "smlocal: {}/{} objects, {} records, {} read, {:.0} s",
                    progress.objects_done.load(Ordering::Relaxed),
                    progress.objects_total.load(Ordering::Relaxed),
                    progress.records.load(Ordering::Relaxed),
                    smlocal::human_bytes(progress.bytes.load(Ordering::Relaxed)),
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop, interrupted) = (stop.clone(), interrupted.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::SeqCst);
                eprintln!("smlocal: stopping (Ctrl-C)");
                stop.cancel();
            }
        });
    }
    let started = std::time::Instant::now();
    let outcome = hosting.run_transform_job(&name, progress.clone(), Some(sink), stop).await;
    reporter.abort();
    let Some(outcome) = outcome else { bail!("the transform job {name} is being run by another process") };
    eprintln!(
        "smlocal: {name} {} in {:.1}s: {} objects, {} records",
        outcome.status,
        started.elapsed().as_secs_f64(),
        progress.objects_done.load(Ordering::Relaxed),
        progress.records.load(Ordering::Relaxed)
    );
    if let Some(reason) = &outcome.failure_reason {
        eprintln!("smlocal: FailureReason: {reason}");
    }
    if outcome.status == "Completed" {
        let millis = progress.transform_millis.load(Ordering::Relaxed).max(1);
        let records = progress.records.load(Ordering::Relaxed);
        eprintln!(
            "smlocal: transformed {records} records in {:.2} s once the containers were up ({:.0} records/s)",
            millis as f64 / 1000.0,
            records as f64 * 1000.0 / millis as f64
        );
        eprintln!("smlocal: output: {}", outcome.output_path);
    }
    Ok(match (interrupted.load(Ordering::SeqCst), outcome.status.as_str()) {
        (true, _) => ExitCode::from(130),
        (_, "Completed") => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
