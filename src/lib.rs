//! smlocal runs Amazon SageMaker training jobs on a workstation, in Docker, exactly as
//! SageMaker runs them: the real `CreateTrainingJob` request in, `model.tar.gz` out where
//! SageMaker would put it, and a record that reads like `DescribeTrainingJob`; then hosts
//! the model as SageMaker endpoints do.
//!
//! # Layout
//!
//! A job flows one way through modules that each do one thing
//! (spec → job → stage → run → artifacts → state). Folders hold families of files that
//! implement one thing; everything else is one flat module.
//!
//! The request and its plan:
//! - [`spec`]: the request as the AWS API defines it, checked against botocore's own service
//!   model so unknown fields, types and constraints are refused in AWS's words.
//! - [`job`]: the validated, resolved plan: hosts `algo-1..N`, instance groups, channels,
//!   resource caps, and what the request asks that a workstation cannot honour.
//! - [`resources`]: instance types (vCPU, memory) and the share of this machine a container
//!   may take while the system keeps its reserve.
//!
//! Inputs:
//! - [`stage`]: each host's `/opt/ml` tree: the three config files and the channel data.
//! - [`cache`]: the content cache of S3 inputs, with parallel ranged downloads.
//! - [`pipe`]: Pipe mode: a FIFO per channel and epoch, fed while the algorithm reads it:
//!   `mod.rs` the feeds and their epochs, `order.rs` who gets what in which epoch,
//!   `source.rs` an object's bytes from the cache or as they arrive, `recordio.rs` the
//!   framing, `manifest.rs` augmented manifests, `fifo.rs` the FIFO's writing end.
//! - [`checkpoints`]: `CheckpointConfig`: restore before start, sync while training.
//! - [`tree`]: walking a folder on this machine without following symbolic links (shared by
//!   the archives, the checkpoint syncer and channel copies).
//! - [`storage`]: the only module that talks to object storage (`object_store`: S3, any
//!   S3-compatible server, local folders).
//!
//! Running:
//! - [`images`]: which image a request's image runs as: itself when on this machine, else
//!   the map's local image for AWS's `repository:tag` (`mod.rs`); `ecr.rs` AWS's registry
//!   form; `stand_ins.rs` smlocal's stand-ins for SageMaker's XGBoost and scikit-learn
//!   images, built from `stand-ins/` (compiled in).
//! - [`docker`]: the only module that talks to the Docker Engine (bollard).
//! - [`relay`]: a loopback S3 endpoint made reachable from containers (script mode).
//! - [`run`]: one job, start to record. A failed algorithm is an outcome, not an error.
//!   `mod.rs` the attempt loop (stage, start, supervise, collect, keep the record current);
//!   `cluster.rs` the Docker objects of the job, removed by `remove()` or on drop;
//!   `supervise.rs` waiting for the hosts and SIGTERM → grace → SIGKILL, behind a seam tested
//!   with paused time; `outcome.rs` how an end becomes `FailureReason` and final metrics.
//!
//! Watching:
//! - [`logs`]: `mod.rs` container output to per-host log files, the terminal and the metric
//!   recorder, and reading it back live; `index.rs` the on-disk line index that
//!   CloudWatch-style reads page through.
//! - [`metrics`]: `MetricDefinitions` applied to every log line; the series and final values.
//! - [`plot`]: the metrics as an SVG chart.
//!
//! Results and records:
//! - [`artifacts`]: the hosts' model and output folders to `model.tar.gz` / `output.tar.gz`
//!   at the output path: `mod.rs` collects and uploads (kept locally when an upload fails),
//!   `tar.rs` merges the hosts' trees, `gzip.rs` compresses on every core.
//! - [`state`]: `mod.rs` the state directory and every path in a job's folder (records
//!   written atomically, logs, work files); `record.rs` the `DescribeTrainingJob`-shaped
//!   record and its typed vocabulary; `listing.rs` ListTrainingJobs' filters and pages;
//!   `details.rs` what a job was given beyond its request (each container's caps, what
//!   each channel staged), for the console.
//! - [`cleanup`]: leftovers of runs whose smlocal process died: Docker objects removed,
//!   records marked `Failed`.
//!
//! Hosting:
//! - [`hosting`]: models, endpoint configurations and endpoints (DESIGN §12): `store.rs` the
//!   records, `control.rs` the control-plane operations in AWS's words, `deploy.rs` one
//!   deployment's containers and the endpoint's transitions (and what a restart finds),
//!   `model_data.rs` the model's artifacts into the endpoint's folder, `runtime.rs`
//!   InvokeEndpoint's routing and errors (`eventstream.rs` its streamed framing), `logs.rs`
//!   the containers' output as CloudWatch streams.
//! - [`transform`]: batch transform: `plan.rs` the request typed, `records.rs` objects into
//!   records and batches, `jsonpath.rs` the filters, `run.rs` one job start to record,
//!   `store.rs` the records.
//! - [`tuning`]: hyperparameter tuning jobs: `space.rs` the ranges and scales, `strategy.rs`
//!   Random, Grid, Bayesian and Hyperband, `plan.rs` the request and each trial's training
//!   job, `run.rs` the loop that launches and follows them, `record.rs`/`store.rs` the records.
//!
//! Front ends:
//! - [`serve`]: `smlocal serve`: `mod.rs` HTTP, routing and AWS errors; `training.rs`,
//!   `hosting.rs` (with the runtime's path), `cloudwatch.rs` and `monitoring.rs` one AWS
//!   service each; `auth.rs` SigV4 checks; `queue.rs` admits jobs and runs them in the
//!   background.
//! - [`console`]: the browser console `smlocal serve` answers GETs with: `mod.rs` routes and
//!   the same-origin-and-token rule for actions, `jobs.rs` the jobs table, `job.rs` a job's
//!   page and Stop, `create.rs` Clone and its checks, `endpoints.rs` endpoints and Invoke,
//!   `files.rs` a `file://` output's archives and checkpoints, `events.rs` the live streams
//!   (Server-Sent Events), `html.rs` the page shell; `assets/` the embedded CSS and script.
//! - [`check`]: `smlocal check IMAGE`, built on [`run`]: `mod.rs` the checks and their order,
//!   `lab.rs` the jobs they run, `judge.rs` the verdicts, `junit.rs` the report; `serve.rs`
//!   the inference contract's checks (`--serve`).
//!
//! The binary's `src/cli/`: `mod.rs` the training and server commands, `hosting.rs` deploy,
//! invoke, endpoints, delete-endpoint and transform.
//!
//! The library installs no signal handlers: [`run()`] takes a shutdown token, and the
//! binary (`src/main.rs`, `src/cli.rs`) turns Ctrl-C into it.

#![forbid(unsafe_code)]

mod artifacts;
mod cache;
mod check;
mod checkpoints;
mod cleanup;
mod console;
mod docker;
mod hosting;
mod images;
mod job;
mod logs;
mod metrics;
mod pipe;
mod plot;
mod relay;
mod resources;
mod run;
mod serve;
mod sigv4;
mod spec;
mod stage;
mod state;
mod storage;
mod transform;
mod tree;
mod tuning;

// The public surface: what the `smlocal` binary, the benchmark and the end-to-end tests use.
// Everything else is `pub(crate)`, so the compiler reports what nothing uses.
pub use crate::artifacts::stream as stream_archive;
pub use crate::cache::{Cache, Progress};
pub use crate::check::{Check, CheckError, CheckOptions, CheckResult, ServeOptions, Verdict, check, junit};
pub use crate::cleanup::{Cleaned, clean_up};
pub use crate::docker::Docker;
pub use crate::hosting::runtime::InvokeError;
pub use crate::hosting::{Hosting, HostingConfig, HostingError};
pub use crate::images::{
    EntrySource, ImageError, ImageMap, MAP_FILE as IMAGE_MAP_FILE, MAP_VARIABLE as IMAGE_MAP_VARIABLE, MapEntry,
    build_stand_in, present as image_present, stand_in_names, stand_in_outdated,
};
pub use crate::job::{Job, JobError, Settings, plan};
pub use crate::logs::{LogSink, hosts as log_hosts, read as read_logs};
pub use crate::metrics::{read as read_metrics, summarize as summarize_metrics};
pub use crate::pipe::{EpochReport, PipeReport};
pub use crate::plot::svg as plot_svg;
pub use crate::resources::{human_bytes, parse_size};
pub use crate::run::{JobOutcome, RunError, RunOptions, Services, run};
pub use crate::serve::auth::{KeyFileError, Signatures};
pub use crate::serve::queue::{CreateError, Queue, QueueConfig};
pub use crate::serve::{Api, serve};
pub use crate::spec::{AwsErrorKind, SpecError, from_value, unique_name};
pub use crate::stage::{Staged, StagedObject, shard, stage};
pub use crate::state::listing::{ListQuery, Page as ListPage};
pub use crate::state::record::{Failure, FailureKind, Record, Secondary, Status};
pub use crate::state::{StateDir, StateError};
pub use crate::storage::{S3Config, Storage};
pub use crate::transform::{TransformOutcome, TransformProgress};
pub use crate::tree::{Beneath, TreeError};
pub use crate::tuning::{TuneOutcome, Tuning, TuningError};
