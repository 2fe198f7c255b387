//! The command line: parse arguments, call the library, print results and errors once with
//! their causes, and map outcomes to exit codes (0 Completed, 1 Failed or Stopped, 2 invalid
//! request or smlocal error, 130 interrupted).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use smlocal::docker::Docker;
use smlocal::job::{self, Settings};
use smlocal::record::Status;
use smlocal::resources::{self, Host, human_bytes};
use smlocal::run::{self, RunOptions};
use smlocal::spec;
use smlocal::store::Store;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "smlocal",
    version,
    about = "Run SageMaker training jobs on this machine, in Docker, exactly as SageMaker runs them"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a CreateTrainingJob request (the JSON boto3 and `aws sagemaker create-training-job
    /// --cli-input-json` take) in the foreground.
    Train(TrainArgs),
    /// Print a job's record as DescribeTrainingJob JSON.
    Describe {
        /// The TrainingJobName.
        name: String,
    },
    /// List jobs, newest first.
    List,
    /// Stop a running job, as StopTrainingJob does: SIGTERM to every host, SIGKILL after the
    /// grace, artifacts collected, status Stopped.
    Stop {
        /// The TrainingJobName.
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
    /// AWS_SESSION_TOKEN). Off by default: on SageMaker they come from the job's role.
    #[arg(long)]
    pass_aws_credentials: bool,
    /// Run a cluster whose memory does not fit this machine by scaling every container's
    /// memory cap down by the same factor.
    #[arg(long)]
    oversubscribe: bool,
}

pub async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Train(args) => train(args).await,
        Command::Describe { name } => describe(&name),
        Command::List => list(),
        Command::Stop { name } => stop(&name),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smlocal: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn train(args: TrainArgs) -> Result<ExitCode> {
    let text = read_request(&args.request)?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text)
            .map_err(spec::SpecError::from)
            .with_context(|| format!("{}: invalid request", args.request))?;
    if args.unique_name {
        rename_uniquely(&mut value);
    }
    let request =
        spec::from_value(value).with_context(|| format!("{}: invalid request", args.request))?;

    let host = Host::detect();
    let reserve = match &args.memory_reserve {
        Some(text) => resources::parse_size(text).with_context(|| {
            format!("--memory-reserve '{text}' is not a size; use e.g. 2G, 512M or 1073741824")
        })?,
        None => host.default_reserve(),
    };
    if reserve >= host.memory_bytes {
        bail!(
            "--memory-reserve {} leaves nothing for containers on this machine ({} in all)",
            human_bytes(reserve),
            human_bytes(host.memory_bytes)
        );
    }
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".into());
    let settings = Settings {
        host,
        reserve,
        region,
        oversubscribe: args.oversubscribe,
    };
    let job = job::plan(request, &settings)
        .with_context(|| format!("{}: invalid request", args.request))?;
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
        let derived = if h.instance.derived {
            " (sizes derived from the instance family)"
        } else {
            ""
        };
        let capped = if h.limits.memory_bytes < h.instance.memory_bytes {
            format!(
                " (scaled down from {})",
                human_bytes(h.instance.memory_bytes)
            )
        } else {
            String::new()
        };
        eprintln!(
            "smlocal: {} is {} with {} vCPU and {} memory{derived}{capped}",
            h.name,
            h.instance.instance_type,
            h.limits.nano_cpus / 1_000_000_000,
            human_bytes(h.limits.memory_bytes)
        );
    }

    let docker = Docker::connect().await?;
    let store = Store::from_env();
    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(args.stop_grace);
    tokio::spawn(stop_on_signals(shutdown.clone(), grace));
    let color = std::io::stdout().is_terminal();
    let options = RunOptions {
        stop_grace: grace,
        keep: args.keep,
        pass_credentials: args.pass_aws_credentials,
        log: Arc::new(move |host, line| {
            let mut out = std::io::stdout().lock();
            let _ = if color {
                writeln!(out, "\x1b[36m{host} |\x1b[0m {line}")
            } else {
                writeln!(out, "{host} | {line}")
            };
        }),
    };
    eprintln!(
        "smlocal: starting training job {} ({})",
        job.name, job.image
    );
    let outcome = run::run(&job, &store, &docker, &options, shutdown).await?;

    let r = &outcome.record;
    let status = match (r.training_job_status, r.secondary_status.as_str()) {
        (Status::Stopped, "MaxRuntimeExceeded") => "Stopped (MaxRuntimeExceeded)".to_string(),
        (s, _) => format!("{s:?}"),
    };
    eprintln!(
        "smlocal: {} {status} in {:.1}s",
        job.name,
        outcome.elapsed.as_secs_f64()
    );
    if let Some(reason) = &r.failure_reason {
        eprintln!("smlocal: FailureReason: {reason}");
    }
    let uploaded = r
        .secondary_status_transitions
        .iter()
        .any(|t| t.status == "Uploading");
    match &outcome.kept_artifacts {
        Some(dir) => eprintln!(
            "smlocal: the artifacts were not uploaded; they are in {}",
            dir.display()
        ),
        None if uploaded => {
            eprintln!("smlocal: model: {}", r.model_artifacts.s3_model_artifacts);
            eprintln!("smlocal: output: {}", job.output_artifacts_uri());
        }
        None => {}
    }
    eprintln!(
        "smlocal: record: smlocal describe {}   logs: {}",
        job.name,
        store.job_dir(&job.name).join("logs").display()
    );
    Ok(if outcome.interrupted {
        ExitCode::from(130)
    } else if r.training_job_status == Status::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn read_request(path: &str) -> Result<String> {
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the request from standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the request file '{path}'"))
    }
}

/// The SageMaker SDK's `name_from_base`: the base cut to fit, then `-YYYY-MM-DD-HH-MM-SS-mmm`.
fn rename_uniquely(value: &mut serde_json::Value) {
    let Some(name) = value.get("TrainingJobName").and_then(|n| n.as_str()) else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{:03}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    let base: String = name.chars().take(63 - stamp.len() - 1).collect();
    value["TrainingJobName"] =
        serde_json::Value::String(format!("{}-{stamp}", base.trim_end_matches('-')));
}

/// Ctrl-C or SIGTERM to smlocal stops the job the way SageMaker's StopTrainingJob does.
async fn stop_on_signals(shutdown: CancellationToken, grace: Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
    eprintln!(
        "\nsmlocal: stopping: SIGTERM to the containers, SIGKILL after {}s",
        grace.as_secs()
    );
    shutdown.cancel();
}

fn stop(name: &str) -> Result<ExitCode> {
    Store::from_env().request_stop(name)?;
    eprintln!("smlocal: stopping {name}; `smlocal describe {name}` shows Stopping, then Stopped");
    Ok(ExitCode::SUCCESS)
}

fn describe(name: &str) -> Result<ExitCode> {
    let record = Store::from_env().load(name)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<ExitCode> {
    let records = Store::from_env().list()?;
    let mut out = std::io::stdout().lock();
    for r in records {
        let created = time::OffsetDateTime::from_unix_timestamp(r.creation_time as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let took = r
            .training_end_time
            .map(|end| format!("{:.1}s", end - r.creation_time))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<40} {:<11} {:<20} {:>8}  {created}",
            r.training_job_name,
            format!("{:?}", r.training_job_status),
            r.secondary_status,
            took
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
