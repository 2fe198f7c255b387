//! The command line: parse arguments, call the library, print results and errors once with
//! their causes, and map outcomes to exit codes (0 Completed, 1 Failed or Stopped, 2 invalid
//! request or smlocal error, 130 interrupted).

mod hosting;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use smlocal::{
    AwsErrorKind, Docker, Job, JobError, JobOutcome, RunError, RunOptions, S3Config, Secondary, Services, Settings,
    SpecError, StateDir, StateError, Status, Storage, human_bytes,
};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "smlocal",
    version,
    about = "Run SageMaker training jobs and endpoints on this machine, in Docker, exactly as SageMaker runs them"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a CreateTrainingJob request (the JSON boto3 and `aws sagemaker create-training-job
    /// --cli-input-json` take) in the foreground.
    Train(TrainArgs),
    /// Run a CreateHyperParameterTuningJob request in the foreground: its training jobs run
    /// here (MaxParallelTrainingJobs at a time, as memory allows), shown as a live table
    /// with their objective; Ctrl-C stops them all.
    Tune(TuneArgs),
    /// Print a job's record as DescribeTrainingJob JSON.
    Describe {
        /// The TrainingJobName.
        name: String,
    },
    /// List jobs, newest first, filtered as ListTrainingJobs filters.
    List(ListArgs),
    /// Print a job's logs, each line prefixed by its host (or an endpoint's, by its stream).
    Logs {
        /// The TrainingJobName, or an EndpointName.
        name: String,
        /// Keep printing new lines until the job ends (works while another terminal runs it).
        #[arg(long, short)]
        follow: bool,
        /// Only this host's lines (algo-1, algo-2, ...).
        #[arg(long)]
        host: Option<String>,
    },
    /// Summarize a job's metrics (last, min, max, count) and plot them to an SVG file.
    Metrics {
        /// The TrainingJobName.
        name: String,
    },
    /// Delete a finished job's record and local files (its uploaded artifacts stay).
    Rm {
        /// The TrainingJobName.
        name: String,
    },
    /// Remove containers and networks left behind by jobs that are no longer running, and
    /// mark jobs whose smlocal process died as Failed.
    Cleanup,
    /// Show the input cache (where, how many objects, how big), or prune it.
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
    /// The image map: which local image runs a request's image from AWS's registry
    /// (SageMaker's algorithms and frameworks, which cannot be pulled here), and whether it
    /// is on this machine; `images build NAME` builds one of smlocal's stand-ins.
    Images {
        #[command(subcommand)]
        action: Option<ImagesAction>,
    },
    /// Check an algorithm image against the training contract with a set of short jobs;
    /// exits 0 when no check failed.
    Check(CheckArgs),
    /// Answer the SageMaker training API (and the CloudWatch Logs calls that read job logs) on
    /// http://127.0.0.1:PORT, running the jobs it creates in the background, so boto3, the AWS
    /// CLI and the SageMaker Python SDK work unchanged against this machine.
    Serve(ServeArgs),
    /// Stop a running job, as StopTrainingJob does: SIGTERM to every host, SIGKILL after the
    /// grace, artifacts collected, status Stopped.
    Stop {
        /// The TrainingJobName.
        name: String,
    },
    /// Deploy a model.tar.gz as an endpoint (CreateModel, CreateEndpointConfig and
    /// CreateEndpoint in one): its containers run `IMAGE serve` and it is InService once
    /// `GET /ping` answers. The endpoint keeps running after this command returns.
    Deploy(hosting::DeployArgs),
    /// Send one request to an endpoint, as InvokeEndpoint does, and print the answer.
    Invoke(hosting::InvokeArgs),
    /// List the endpoints (made here or through smlocal serve) and their status.
    Endpoints,
    /// Run a CreateTransformJob request (batch transform: every object of the input scored
    /// by the model's serving container, `<S3OutputPath>/<key>.out`) in the foreground.
    Transform(hosting::TransformArgs),
    /// Delete an endpoint: its containers get SIGTERM (SIGKILL after 30 s) and are removed;
    /// the configuration and model `smlocal deploy` made under its name go too. Its logs stay.
    DeleteEndpoint {
        /// The EndpointName.
        name: String,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The request file, or `-` for standard input.
    request: String,
    /// Seconds between SIGTERM and SIGKILL when the job is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    stop_grace: u64,
    /// Leave the containers, network and work folders in place for debugging.
    #[arg(long)]
    keep: bool,
    /// Append a timestamp to TrainingJobName, as the SageMaker SDK does, so re-runs never clash.
    #[arg(long)]
    unique_name: bool,
    /// Host memory no container may use (default: the larger of 1 GiB and 10% of memory).
    #[arg(long, value_name = "SIZE", env = "SMLOCAL_MEMORY_RESERVE")]
    memory_reserve: Option<String>,
    /// Give the containers this shell's AWS credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN) and an S3 endpoint they can reach (AWS_ENDPOINT_URL_S3, S3_ENDPOINT_URL).
    /// Off by default: on SageMaker they come from the job's role.
    #[arg(long)]
    pass_aws_credentials: bool,
    /// Run a cluster whose memory does not fit this machine by scaling every container's
    /// memory cap down by the same factor.
    #[arg(long)]
    oversubscribe: bool,
    /// Replay a spot interruption this long after training starts (e.g. 30s, 2m): SIGTERM,
    /// the grace, a checkpoint sync, then the job starts again with its checkpoints restored.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    interrupt_after: Option<Duration>,
    /// Seconds between checkpoint syncs to CheckpointConfig.S3Uri while training.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    checkpoint_interval: u64,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The port to listen on (0: any free port; the URL is printed first).
    #[arg(long, default_value_t = 8808)]
    port: u16,
    /// The address to listen on. Without --require-signature requests are not authenticated
    /// (signatures are accepted unchecked), so anything but the loopback exposes job creation
    /// to the network.
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1")]
    listen: std::net::IpAddr,
    /// Check every request's AWS signature (SigV4), for a machine other users share: accepted
    /// are the server's own key pair, kept in $SMLOCAL_HOME/serve-credentials (made on first
    /// use, readable by this user only; an AWS credentials file, profile [smlocal]), and this
    /// process's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    require_signature: bool,
    /// Jobs that run at once; later ones wait in order with SecondaryStatus Pending.
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_parallel: usize,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    stop_grace: u64,
    /// Host memory no container may use (default: the larger of 1 GiB and 10% of memory).
    #[arg(long, value_name = "SIZE", env = "SMLOCAL_MEMORY_RESERVE")]
    memory_reserve: Option<String>,
    /// Scale memory caps down to fit this machine instead of refusing a job.
    #[arg(long)]
    oversubscribe: bool,
    /// Give every job's containers this server's AWS credentials and an S3 endpoint they can
    /// reach (AWS_ENDPOINT_URL_S3 and S3_ENDPOINT_URL), which script mode needs to fetch
    /// `sagemaker_submit_directory`. Off by default: on SageMaker they come from the role.
    #[arg(long)]
    pass_aws_credentials: bool,
    /// Seconds an endpoint's container may take to answer an invocation before the client
    /// gets ModelError (SageMaker: 60).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    invocation_timeout: u64,
    /// A folder whose `file://` URIs requests may name (repeatable). Without it every
    /// `file://` URI is refused: a client (or a web page that reaches this port) could
    /// otherwise stage, and read back through the logs, any folder of this machine.
    #[arg(long, value_name = "DIR")]
    allow_file_root: Vec<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum ImagesAction {
    /// Build smlocal's local stand-in for one of SageMaker's images, with no registry: a
    /// Debian root (mmdebstrap) and pinned wheels downloaded from PyPI on this machine.
    Build {
        /// xgboost (sagemaker-xgboost:1.7-1) or sklearn (sagemaker-scikit-learn:1.2-1-cpu-py3).
        name: String,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Remove least-recently-used objects until the cache is at most SIZE (0 empties it).
    Prune {
        #[arg(long, value_name = "SIZE", default_value = "0")]
        max_size: String,
    },
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The image to check (it must be on this machine).
    image: String,
    /// Drive the runs with your own CreateTrainingJob request (hyperparameters, channels);
    /// its output path is replaced by a scratch folder.
    #[arg(long, value_name = "REQUEST.json")]
    request: Option<String>,
    /// Write the results as JUnit XML for CI systems.
    #[arg(long, value_name = "FILE")]
    junit: Option<String>,
    /// Run only these checks (comma-separated names).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Hyperparameters (a JSON object) the image must reject, for the `failure` check;
    /// without them that run has no input channels.
    #[arg(long, value_name = "JSON")]
    invalid_hyperparameters: Option<String>,
    /// Seconds between SIGTERM and SIGKILL in the `sigterm` check.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stop_grace: u64,
    /// Host memory no container may use.
    #[arg(long, value_name = "SIZE", env = "SMLOCAL_MEMORY_RESERVE")]
    memory_reserve: Option<String>,
    /// Scale memory caps down to fit this machine instead of refusing.
    #[arg(long)]
    oversubscribe: bool,
    /// Check the inference contract (`IMAGE serve`, /ping, /invocations, SIGTERM) instead
    /// of the training one.
    #[arg(long)]
    serve: bool,
    /// With --serve: the model.tar.gz (a path, file:// or s3:// URI) mounted at /opt/ml/model.
    #[arg(long, value_name = "MODEL.tar.gz", requires = "serve")]
    model: Option<String>,
    /// With --serve: the sample request body the `invocations` check sends (default `1,2`).
    #[arg(long, value_name = "FILE", requires = "serve")]
    payload: Option<String>,
    /// With --serve: the sample request's content type.
    #[arg(long, value_name = "TYPE", default_value = "text/csv")]
    content_type: String,
}

#[derive(clap::Args)]
struct ListArgs {
    /// Only jobs with this status (InProgress, Completed, Failed, Stopping, Stopped).
    #[arg(long, value_name = "STATUS")]
    status_equals: Option<String>,
    /// Only jobs whose name contains this text (case-insensitive, as AWS).
    #[arg(long, value_name = "TEXT")]
    name_contains: Option<String>,
    /// Only jobs created after this time (RFC 3339, e.g. 2026-11-26T12:00:00Z, or epoch seconds).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    creation_time_after: Option<f64>,
    /// Only jobs created before this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    creation_time_before: Option<f64>,
    /// At most this many jobs.
    #[arg(long, value_name = "N")]
    max_results: Option<usize>,
}

/// `30s`, `2m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1.0),
        Some('m') => (&t[..t.len() - 1], 60.0),
        Some('h') => (&t[..t.len() - 1], 3600.0),
        _ => (t, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n >= 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!("'{text}' is not a duration; use e.g. 30s, 2m or 1h")),
    }
}

/// RFC 3339 or epoch seconds, as epoch seconds.
fn parse_time(text: &str) -> Result<f64, String> {
    if let Ok(epoch) = text.trim().parse::<f64>() {
        return Ok(epoch);
    }
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        .map_err(|_| format!("'{text}' is not a time; use RFC 3339 (2026-11-26T12:00:00Z) or epoch seconds"))
}

pub(crate) async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Train(args) => train(args).await,
        Command::Tune(args) => tune(args).await,
        Command::Describe { name } => describe(&name),
        Command::List(args) => list(args),
        Command::Logs { name, follow, host } => logs(&name, follow, host.as_deref()).await,
        Command::Metrics { name } => metrics(&name),
        Command::Rm { name } => rm(&name),
        Command::Cleanup => cleanup().await,
        Command::Check(args) => check(args).await,
        Command::Cache { action } => cache(action),
        Command::Images { action } => images(action).await,
        Command::Stop { name } => stop(&name),
        Command::Serve(args) => serve(args).await,
        Command::Deploy(args) => hosting::deploy(args).await,
        Command::Invoke(args) => hosting::invoke(args).await,
        Command::Endpoints => hosting::endpoints().await,
        Command::Transform(args) => hosting::transform(args).await,
        Command::DeleteEndpoint { name } => hosting::delete_endpoint(&name).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smlocal: error: {}", present(&e));
            ExitCode::from(2)
        }
    }
}

/// An error with its causes, once, as the command line words it: the library's errors carry
/// AWS's message and kind; here the kind becomes a prefix (as the AWS CLI prints it) and the
/// command line's own hints are added. A transparent wrapper (`RunError::State`) displays as
/// the error it wraps and is not a separate cause, so nothing is printed twice.
fn present(e: &anyhow::Error) -> String {
    let mut shown = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // Many errors (object_store's among them) already print their source: say it once.
        if shown.contains(&text) {
            continue;
        }
        let part = match classify(cause) {
            None => text,
            Some((kind, hint)) => {
                let kind = match kind {
                    AwsErrorKind::Internal => String::new(),
                    kind => format!("{}: ", kind.as_str()),
                };
                format!("{kind}{text}{hint}")
            }
        };
        if !shown.is_empty() {
            shown.push_str(": ");
        }
        shown.push_str(&part);
    }
    shown
}

/// The AWS kind of one of smlocal's errors, and the command line's hint for it.
fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<(AwsErrorKind, &'static str)> {
    let state = |e: &StateError| {
        let hint = match e {
            StateError::ResourceInUse { .. } => {
                ". Pick a new TrainingJobName, or run with --unique-name to append a timestamp as the SageMaker SDK does"
            }
            StateError::NotFound(_) => " (see `smlocal list`)",
            _ => "",
        };
        (e.aws_kind(), hint)
    };
    let validation = |kind: AwsErrorKind| (kind == AwsErrorKind::Validation).then_some((kind, ""));
    if let Some(e) = cause.downcast_ref::<StateError>() {
        return Some(state(e));
    }
    if let Some(RunError::State(e)) = cause.downcast_ref::<RunError>() {
        return Some(state(e));
    }
    // Only the service's constraint findings read "N validation errors detected"; the rest
    // (botocore's parameter errors, a missing image) are already worded for a reader.
    match (cause.downcast_ref::<SpecError>(), cause.downcast_ref::<JobError>()) {
        (Some(e @ SpecError::Constraints(_)), _) => validation(e.aws_kind()),
        (_, Some(e @ JobError::Constraints(_))) => validation(e.aws_kind()),
        _ => None,
    }
}

async fn train(args: TrainArgs) -> Result<ExitCode> {
    let text = read_request(&args.request)?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(SpecError::from)
        .with_context(|| format!("{}: invalid request", args.request))?;
    if args.unique_name {
        rename_uniquely(&mut value);
    }
    let request = smlocal::from_value(value).with_context(|| format!("{}: invalid request", args.request))?;

    let storage = Storage::from_env();
    let settings = settings(args.memory_reserve.as_deref(), args.oversubscribe, &storage)?;
    let job = smlocal::plan(request, &settings).with_context(|| format!("{}: invalid request", args.request))?;
    print_plan(&job);

    let services = Services { state: StateDir::from_env(), docker: Docker::connect().await?, storage };
    let store = &services.state;
    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(args.stop_grace);
    let hurry = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone(), hurry.clone(), grace));
    let color = std::io::stdout().is_terminal();
    let log: smlocal::LogSink = Arc::new(move |host, line| {
        let mut out = std::io::stdout().lock();
        let _ = if color { writeln!(out, "\x1b[36m{host} |\x1b[0m {line}") } else { writeln!(out, "{host} | {line}") };
    });
    let options = RunOptions {
        stop_grace: grace,
        keep: args.keep,
        pass_credentials: args.pass_aws_credentials,
        interrupt_after: args.interrupt_after,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval.max(1)),
        hurry,
        ..RunOptions::new(log)
    };
    eprintln!("smlocal: starting training job {} ({})", job.name, job.image);
    let progress = options.progress.clone();
    let shown = tokio::spawn(show_progress(progress));
    let outcome = smlocal::run(&job, &services, &options, shutdown).await;
    shown.abort();
    let outcome = outcome?;

    print_outcome(&job, &outcome, store, args.keep);
    Ok(exit_code(&outcome))
}

/// What smlocal will do differently from the request, and each host's size.
fn print_plan(job: &Job) {
    for notice in &job.notices {
        eprintln!("smlocal: note: {notice}");
    }
    if job.memory_scale < 1.0 {
        eprintln!(
            "smlocal: --oversubscribe: the cluster needs more memory than this machine has beyond its reserve; every container's memory cap is scaled to {:.0}% of its instance type's",
            job.memory_scale * 100.0
        );
    }
    for h in &job.hosts {
        let derived = if h.instance.derived { " (sizes derived from the instance family)" } else { "" };
        let capped = if h.limits.memory_bytes < h.instance.memory_bytes {
            format!(" (scaled down from {})", human_bytes(h.instance.memory_bytes))
        } else {
            String::new()
        };
        let cpus = h.limits.nano_cpus / 1_000_000_000;
        let cores = match h.cores() {
            Some(cores) => format!(" (core {cores})"),
            None if i64::from(h.instance.vcpu) > cpus => {
                format!(
                    " (of its {} vCPU: this machine has {cpus} cores, the container sees them all)",
                    h.instance.vcpu
                )
            }
            None => String::new(),
        };
        eprintln!(
            "smlocal: {} is {} with {cpus} vCPU{cores} and {} memory{derived}{capped}",
            h.name,
            h.instance.instance_type,
            human_bytes(h.limits.memory_bytes)
        );
    }
}

/// How the job ended and where its results and record are.
fn print_outcome(job: &Job, outcome: &JobOutcome, store: &StateDir, keep: bool) {
    let r = &outcome.record;
    let status = match (r.training_job_status, r.secondary_status) {
        (Status::Stopped, Secondary::MaxRuntimeExceeded) => "Stopped (MaxRuntimeExceeded)".to_string(),
        (s, _) => s.to_string(),
    };
    eprintln!("smlocal: {} {status} in {:.1}s", job.name, outcome.elapsed.as_secs_f64());
    if let Some(reason) = &r.failure_reason {
        eprintln!("smlocal: FailureReason: {reason}");
    }
    match &outcome.kept_artifacts {
        Some(dir) => eprintln!("smlocal: the artifacts were not uploaded; they are in {}", dir.display()),
        None if outcome.uploaded => {
            eprintln!("smlocal: model: {}", r.model_artifacts.s3_model_artifacts);
            eprintln!("smlocal: output: {}", job.output_artifacts_uri());
        }
        None => {}
    }
    if keep {
        eprintln!(
            "smlocal: --keep: the containers, network and {} were left for debugging; `smlocal cleanup` removes them",
            store.work_dir(&job.name).display()
        );
    }
    eprintln!("smlocal: record: smlocal describe {}   logs: {}", job.name, store.logs_dir(&job.name).display());
}

/// The exit-code contract: 0 Completed, 1 Failed or Stopped, 130 interrupted by Ctrl-C.
fn exit_code(outcome: &JobOutcome) -> ExitCode {
    if outcome.interrupted {
        ExitCode::from(130)
    } else if outcome.record.training_job_status == Status::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// This machine, its memory reserve and the region, as jobs are planned.
fn settings(memory_reserve: Option<&str>, oversubscribe: bool, storage: &Storage) -> Result<Settings> {
    let reserve = match memory_reserve {
        Some(text) => Some(
            smlocal::parse_size(text)
                .with_context(|| format!("--memory-reserve '{text}' is not a size; use e.g. 2G, 512M or 1073741824"))?,
        ),
        None => None,
    };
    let region = storage.region().unwrap_or("us-east-1");
    Settings::detect(reserve, oversubscribe, region).context("--memory-reserve")
}

/// Staging progress: a bar with bytes and bytes/s on a terminal, a line every few seconds
/// otherwise. Silent when nothing needs downloading.
async fn show_progress(progress: Arc<smlocal::Progress>) {
    use std::sync::atomic::Ordering;
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_line = std::time::Instant::now();
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let finished = progress.finished.load(Ordering::Relaxed);
        let total = progress.total.load(Ordering::Relaxed);
        let cached = progress.cached.load(Ordering::Relaxed);
        let fetched = progress.fetched.load(Ordering::Relaxed);
        let done = fetched + cached;
        if fetched > 0 && terminal {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "smlocal: downloading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            b.set_length(total.max(done));
            b.set_position(done);
        } else if fetched > 0 && (last_line.elapsed() >= Duration::from_secs(5) || finished) {
            let rate = fetched as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "smlocal: downloaded {} of {} ({}/s; {} from the cache)",
                human_bytes(done),
                human_bytes(total),
                human_bytes(rate as u64),
                human_bytes(cached)
            );
            last_line = std::time::Instant::now();
        }
        if finished {
            if let Some(b) = bar {
                b.finish();
            }
            return;
        }
    }
}

fn read_request(path: &str) -> Result<String> {
    if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the request from standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read the request file '{path}'"))
    }
}

/// `--unique-name`: the request's `TrainingJobName` made unique as the SageMaker SDK does.
fn rename_uniquely(value: &mut serde_json::Value) {
    if let Some(name) = value.get("TrainingJobName").and_then(|n| n.as_str()) {
        value["TrainingJobName"] =
            serde_json::Value::String(smlocal::unique_name(name, time::OffsetDateTime::now_utc()));
    }
}

/// Ctrl-C or SIGTERM to smlocal stops the job the way SageMaker's StopTrainingJob does.
/// A second one ends the grace at once (`hurry`): SIGKILL now.
async fn stop_on_signals(shutdown: CancellationToken, hurry: CancellationToken, grace: Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut signalled = async || {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    signalled().await;
    eprintln!(
        "\nsmlocal: stopping: SIGTERM to the containers, SIGKILL after {}s (Ctrl-C again: SIGKILL now)",
        grace.as_secs()
    );
    shutdown.cancel();
    signalled().await;
    eprintln!("\nsmlocal: SIGKILL to the containers still running");
    hurry.cancel();
}

#[derive(clap::Args, Debug)]
pub(crate) struct TuneArgs {
    /// The CreateHyperParameterTuningJob request (JSON, as `aws sagemaker
    /// create-hyper-parameter-tuning-job --cli-input-json` takes it).
    request: std::path::PathBuf,
    /// Seconds between SIGTERM and SIGKILL when a training job is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    stop_grace: u64,
    /// Memory kept for this machine: no container may use it (default: the larger of 1 GiB
    /// and 10% of memory).
    #[arg(long, value_name = "SIZE", env = "SMLOCAL_MEMORY_RESERVE")]
    memory_reserve: Option<String>,
    /// Scale every container's memory cap down to fit this machine, instead of refusing.
    #[arg(long)]
    oversubscribe: bool,
    /// Give the containers this process's AWS credentials and S3 endpoint.
    #[arg(long)]
    pass_aws_credentials: bool,
}

async fn tune(args: TuneArgs) -> Result<ExitCode> {
    use smlocal::{Queue, QueueConfig};
    use std::io::IsTerminal;
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("cannot read the request {}", args.request.display()))?;
    let body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON request", args.request.display()))?;
    let storage = Storage::from_env();
    let max_parallel =
        body["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"].as_u64().unwrap_or(1).max(1)
            as usize;
    let config = QueueConfig {
        settings: settings(args.memory_reserve.as_deref(), args.oversubscribe, &storage)?,
        max_parallel,
        stop_grace: Duration::from_secs(args.stop_grace),
        pass_credentials: args.pass_aws_credentials,
        hurry: CancellationToken::new(),
    };
    let hurry = config.hurry.clone();
    let docker = Docker::connect().await?;
    let queue = Arc::new(Queue::new(Services { state: StateDir::from_env(), docker, storage }, config));
    let tuning = smlocal::Tuning::new(queue.clone());
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signals(stop.clone(), hurry, Duration::from_secs(args.stop_grace)));
    // On a terminal the table is redrawn in place; otherwise each change is one line.
    let tty = std::io::stdout().is_terminal();
    let shown = std::sync::Mutex::new((0usize, std::collections::BTreeSet::<String>::new()));
    let on_change: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |table: &str| {
        let mut out = std::io::stdout().lock();
        let Ok(mut shown) = shown.lock() else { return };
        if tty {
            if shown.0 > 0 {
                let _ = write!(out, "\x1b[{}F\x1b[J", shown.0);
            }
            let _ = write!(out, "{table}");
            shown.0 = table.lines().count();
        } else {
            for line in table.lines() {
                if shown.1.insert(line.to_string()) {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        let _ = out.flush();
    });
    let outcome = tuning.tune_here(&body, stop, on_change).await;
    queue.shut_down().await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => bail!("{}: {e}", e.aws_kind().as_str()),
    };
    if let Some(why) = &outcome.completion {
        eprintln!("smlocal: {} ended early: {why}", outcome.name);
    }
    match &outcome.best {
        Some((job, value)) => eprintln!(
            "smlocal: tuning job {} {} after {} training jobs; best: {job} ({value})",
            outcome.name, outcome.status, outcome.jobs
        ),
        None => eprintln!(
            "smlocal: tuning job {} {} after {} training jobs; no objective was reported",
            outcome.name, outcome.status, outcome.jobs
        ),
    }
    if let Some(reason) = &outcome.failure_reason {
        eprintln!("smlocal: FailureReason: {reason}");
    }
    Ok(if outcome.status == "Completed" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    use smlocal::{Queue, QueueConfig};
    if args.max_parallel == 0 {
        bail!("--max-parallel must be at least 1");
    }
    let storage = Storage::with_local_roots(S3Config::from_env(), args.allow_file_root.clone());
    let config = QueueConfig {
        settings: settings(args.memory_reserve.as_deref(), args.oversubscribe, &storage)?,
        max_parallel: args.max_parallel,
        stop_grace: Duration::from_secs(args.stop_grace),
        pass_credentials: args.pass_aws_credentials,
        hurry: CancellationToken::new(),
    };
    let config_hurry = config.hurry.clone();
    let store = StateDir::from_env();
    let docker = Docker::connect().await?;
    // Jobs a previous server was running when it died: Failed with the reason, containers gone.
    // The user's own records name their output folders: any of them, not only the roots
    // clients of this server may name.
    let cleaned = smlocal::clean_up(&store, &docker, &Storage::from_env()).await?;
    for name in &cleaned.orphaned_jobs {
        eprintln!("smlocal: {name} was running when its smlocal process ended; marked Failed");
    }
    report_leftovers(&cleaned);
    let address = std::net::SocketAddr::new(args.listen, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}; is another server there? pick one with --port"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let signatures = if args.require_signature {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let own = env("AWS_ACCESS_KEY_ID").zip(env("AWS_SECRET_ACCESS_KEY"));
        let file = store.root().join("serve-credentials");
        Some(Arc::new(smlocal::Signatures::load_or_create(&file, own)?))
    } else {
        None
    };
    if !args.listen.is_loopback() && signatures.is_none() {
        eprintln!(
            "smlocal: warning: listening on {address}: anyone who can reach it can create jobs on this machine (add --require-signature)"
        );
    }
    println!("smlocal: serving the SageMaker training and hosting APIs on {url}");
    std::io::stdout().flush()?;
    eprintln!(
        "smlocal: jobs, endpoints and logs are in {}; point clients here with\n  export AWS_ENDPOINT_URL_SAGEMAKER={url} AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={url} AWS_ENDPOINT_URL_CLOUDWATCH_LOGS={url}",
        store.root().display()
    );
    if signatures.is_none() {
        eprintln!("smlocal: console: {url}/ (jobs, logs, metrics, endpoints)");
    } else {
        eprintln!("smlocal: the console at {url}/ is off: requests must be signed, and a browser cannot sign");
    }
    if let Some(signatures) = &signatures {
        eprintln!(
            "smlocal: requests must be signed with the key pair {} in {} (AWS_SHARED_CREDENTIALS_FILE={} AWS_PROFILE=smlocal){}",
            signatures.own_key,
            signatures.key_file.display(),
            signatures.key_file.display(),
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
                " or with this process's AWS_ACCESS_KEY_ID"
            } else {
                ""
            }
        );
    }
    let hosting_config = smlocal::HostingConfig {
        invocation_timeout: Duration::from_secs(args.invocation_timeout.max(1)),
        pass_credentials: args.pass_aws_credentials,
        ..smlocal::HostingConfig::new(config.settings.clone())
    };
    let hosting = smlocal::Hosting::new(store.clone(), docker.clone(), storage.clone(), hosting_config);
    // Endpoints a previous server left: in service again, or Failed with the reason.
    tokio::spawn({
        let hosting = hosting.clone();
        async move { hosting.reconcile().await }
    });
    let queue = Arc::new(Queue::new(Services { state: store, docker, storage }, config));
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone(), config_hurry, Duration::from_secs(args.stop_grace)));
    let tuning = Arc::new(smlocal::Tuning::new(queue.clone()));
    let api = Arc::new(smlocal::Api { queue: queue.clone(), hosting: hosting.clone(), tuning });
    smlocal::serve(listener, api, signatures, shutdown).await;
    queue.shut_down().await;
    hosting.shut_down().await;
    eprintln!("smlocal: server stopped");
    Ok(ExitCode::SUCCESS)
}

fn stop(name: &str) -> Result<ExitCode> {
    StateDir::from_env().request_stop(name)?;
    eprintln!("smlocal: stopping {name}; `smlocal describe {name}` shows Stopping, then Stopped");
    Ok(ExitCode::SUCCESS)
}

fn describe(name: &str) -> Result<ExitCode> {
    let record = StateDir::from_env().load(name)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(ExitCode::SUCCESS)
}

fn list(args: ListArgs) -> Result<ExitCode> {
    if let Some(status) = &args.status_equals {
        status.parse::<Status>().context("--status-equals")?;
    }
    let query = smlocal::ListQuery {
        status_equals: args.status_equals,
        name_contains: args.name_contains,
        creation_time_after: args.creation_time_after,
        creation_time_before: args.creation_time_before,
        max_results: args.max_results,
        ..Default::default()
    };
    let matching = StateDir::from_env().list_page(&query, usize::MAX)?.summaries;
    let mut out = std::io::stdout().lock();
    for s in matching {
        let number = |field: &str| s.get(field).and_then(serde_json::Value::as_f64);
        let text = |field: &str| s.get(field).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let creation = number("CreationTime").unwrap_or(0.0);
        let created = time::OffsetDateTime::from_unix_timestamp(creation as i64)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        let took = number("TrainingEndTime").map(|end| format!("{:.1}s", end - creation)).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<40} {:<11} {:<20} {:>8}  {created}",
            text("TrainingJobName"),
            text("TrainingJobStatus"),
            text("SecondaryStatus"),
            took
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn logs(name: &str, follow: bool, host: Option<&str>) -> Result<ExitCode> {
    let store = StateDir::from_env();
    match store.load(name) {
        Ok(_) => {}
        // Not a job: an endpoint's group, when there is one of that name.
        Err(StateError::NotFound(_)) if host.is_none() => return hosting::endpoint_logs(name, follow).await,
        Err(e) => return Err(e.into()),
    }
    let logs_dir = store.logs_dir(name);
    if let Some(h) = host {
        let known = smlocal::log_hosts(&logs_dir);
        if !known.iter().any(|k| k == h) && !follow {
            bail!("job {name} has no logs for host '{h}'; its hosts are: {}", known.join(", "));
        }
    }
    let done =
        || store.load(name).map(|r| r.training_job_status.is_terminal() || !store.is_running(&r)).unwrap_or(true);
    let mut out = std::io::stdout().lock();
    smlocal::read_logs(&logs_dir, host, follow, done, |h, line| {
        let _ = writeln!(out, "{h} | {line}");
        let _ = out.flush();
    })
    .await;
    Ok(ExitCode::SUCCESS)
}

fn metrics(name: &str) -> Result<ExitCode> {
    let store = StateDir::from_env();
    let record = store.load(name)?;
    let points = smlocal::read_metrics(&store.metrics_path(name));
    let summaries = smlocal::summarize_metrics(&points);
    let mut out = std::io::stdout().lock();
    if summaries.is_empty() {
        let defined = record.request.get("AlgorithmSpecification").and_then(|a| a.get("MetricDefinitions")).is_some();
        let why = if defined {
            "its MetricDefinitions matched no log line"
        } else {
            "it has no AlgorithmSpecification.MetricDefinitions"
        };
        writeln!(out, "job {name} has no metric values: {why}")?;
    } else {
        writeln!(out, "{:<32} {:>14} {:>14} {:>14} {:>7}", "METRIC", "LAST", "MIN", "MAX", "COUNT")?;
        for s in &summaries {
            writeln!(out, "{:<32} {:>14.6} {:>14.6} {:>14.6} {:>7}", s.metric, s.last, s.min, s.max, s.count)?;
        }
    }
    let plot = store.plot_path(name);
    std::fs::write(&plot, smlocal::plot_svg(name, &points))
        .with_context(|| format!("cannot write {}", plot.display()))?;
    writeln!(out, "plot: {}", plot.display())?;
    Ok(ExitCode::SUCCESS)
}

fn rm(name: &str) -> Result<ExitCode> {
    StateDir::from_env().remove(name)?;
    eprintln!("smlocal: removed {name} (its uploaded artifacts are untouched)");
    Ok(ExitCode::SUCCESS)
}

async fn check(args: CheckArgs) -> Result<ExitCode> {
    use smlocal::{Check, CheckOptions, Verdict};
    let request = match &args.request {
        Some(path) => Some(
            serde_json::from_str(&read_request(path)?)
                .with_context(|| format!("{path}: the request is not valid JSON"))?,
        ),
        None => None,
    };
    let storage = Storage::from_env();
    let invalid_hyperparameters = match &args.invalid_hyperparameters {
        Some(text) => Some(
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .context("--invalid-hyperparameters must be a JSON object such as '{\"epochs\": \"-1\"}'")?,
        ),
        None => None,
    };
    let options = CheckOptions {
        request,
        only: match &args.only {
            Some(names) => Some(names.iter().map(|n| n.parse::<Check>()).collect::<Result<_, _>>()?),
            None => None,
        },
        stop_grace: Duration::from_secs(args.stop_grace),
        invalid_hyperparameters,
        settings: settings(args.memory_reserve.as_deref(), args.oversubscribe, &storage)?,
        log: Arc::new(|_, _| {}),
        serve: match args.serve {
            false => None,
            true => Some(smlocal::ServeOptions {
                model: match &args.model {
                    Some(m) if m.contains("://") => Some(m.clone()),
                    Some(m) => Some(format!(
                        "file://{}",
                        std::fs::canonicalize(m).with_context(|| format!("--model '{m}'"))?.display()
                    )),
                    None => None,
                },
                payload: match &args.payload {
                    Some(path) => std::fs::read(path).with_context(|| format!("--payload '{path}'"))?,
                    None => b"1,2\n".to_vec(),
                },
                content_type: args.content_type.clone(),
            }),
        },
    };
    let docker = Docker::connect().await?;
    let started = std::time::Instant::now();
    let contract = if args.serve { "inference" } else { "training" };
    eprintln!("smlocal: checking {} against the SageMaker {contract} contract", args.image);
    let results = smlocal::check(&args.image, &docker, &storage, &options).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<13} {:<5} {:>6}  EVIDENCE / FIX", "CHECK", "RESULT", "SECS")?;
    for r in &results {
        let verdict = match r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        writeln!(out, "{:<13} {:<6} {:>5.1}  {}", r.check.name(), verdict, r.seconds, r.evidence)?;
        if r.verdict != Verdict::Pass && !r.fix.is_empty() {
            writeln!(out, "{:<27}fix: {}", "", r.fix)?;
        }
    }
    let failed = results.iter().filter(|r| r.verdict == Verdict::Fail).count();
    writeln!(out, "{} checks, {failed} failed, in {:.1} s", results.len(), started.elapsed().as_secs_f64())?;
    if let Some(path) = &args.junit {
        std::fs::write(path, smlocal::junit(&args.image, &results)).with_context(|| format!("cannot write {path}"))?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn cache(action: Option<CacheAction>) -> Result<ExitCode> {
    let cache = smlocal::Cache::new(StateDir::from_env().root());
    match action {
        None => {
            let usage = cache.usage();
            println!("cache: {}", cache.root().display());
            println!("objects: {}", usage.entries);
            println!(
                "size: {} (limit {}; set SMLOCAL_CACHE_MAX to change it)",
                human_bytes(usage.bytes),
                human_bytes(cache.max_bytes())
            );
        }
        Some(CacheAction::Prune { max_size }) => {
            let max = smlocal::parse_size(&max_size)
                .with_context(|| format!("--max-size '{max_size}' is not a size; use e.g. 10G or 0"))?;
            let removed = cache.prune(max);
            let left = cache.usage();
            println!(
                "removed {} object(s), {}; {} object(s), {} left",
                removed.entries,
                human_bytes(removed.bytes),
                left.entries,
                human_bytes(left.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn images(action: Option<ImagesAction>) -> Result<ExitCode> {
    let home = StateDir::from_env().root().to_path_buf();
    if let Some(ImagesAction::Build { name }) = action {
        let image = smlocal::build_stand_in(&name, &home)?;
        println!("{image} is ready: requests for the AWS image it stands for now run here");
        return Ok(ExitCode::SUCCESS);
    }
    let map = smlocal::ImageMap::load(&home)?;
    let docker = Docker::connect().await?;
    println!("An image from AWS's registry (<account>.dkr.ecr.<region>.amazonaws.com/REPOSITORY:TAG, any region)");
    println!("runs as itself when it is on this machine, else as the local image mapped to REPOSITORY:TAG.");
    println!();
    let rows: Vec<[String; 4]> = {
        let mut rows = Vec::new();
        for entry in map.entries() {
            let here = match smlocal::image_present(&docker, &entry.image).await? {
                Some(size) => match entry.build {
                    Some(name) if smlocal::stand_in_outdated(&docker, name).await? => {
                        format!("yes, {}, from older sources: smlocal images build {name}", human_bytes(size))
                    }
                    _ => format!("yes, {}", human_bytes(size)),
                },
                None => match entry.build {
                    Some(name) => format!("no: smlocal images build {name}"),
                    None => "no".to_string(),
                },
            };
            rows.push([entry.key.clone(), entry.image.clone(), entry.source.to_string(), here]);
        }
        rows
    };
    let header = ["AWS IMAGE", "LOCAL IMAGE", "FROM", "ON THIS MACHINE"].map(String::from);
    let widths: Vec<usize> =
        (0..4).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(&rows) {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    println!();
    println!(
        "Add entries in {} ({{\"REPOSITORY:TAG\": \"local/image:tag\"}}, REPOSITORY:* for every tag) or {}=REPOSITORY:TAG=IMAGE,...",
        map.file().display(),
        smlocal::IMAGE_MAP_VARIABLE
    );
    Ok(ExitCode::SUCCESS)
}

async fn cleanup() -> Result<ExitCode> {
    let store = StateDir::from_env();
    let docker = Docker::connect().await?;
    let cleaned = smlocal::clean_up(&store, &docker, &Storage::from_env()).await?;
    eprintln!(
        "smlocal: removed {} container(s), {} network(s) and {} work folder(s); marked {} orphaned job(s) Failed",
        cleaned.containers,
        cleaned.networks,
        cleaned.work_folders,
        cleaned.orphaned_jobs.len()
    );
    report_leftovers(&cleaned);
    Ok(if cleaned.left.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What cleaning could not remove, and the running containers it left alone.
fn report_leftovers(cleaned: &smlocal::Cleaned) {
    for left in &cleaned.left {
        eprintln!("smlocal: warning: could not remove: {left}");
    }
    if cleaned.spared > 0 {
        eprintln!(
            "smlocal: left {} running container(s) alone: their state directory is not visible here, so their job may be alive (`docker rm -f` them if it is not)",
            cleaned.spared
        );
    }
}
