//! smlocal runs Amazon SageMaker training jobs on a workstation, in Docker, exactly as
//! SageMaker runs them: the real `CreateTrainingJob` request in, `model.tar.gz` out where
//! SageMaker would put it, and a record that reads like `DescribeTrainingJob`.
//!
//! # Layout
//!
//! A job flows one way through modules that each do one thing
//! (spec → job → stage → run → artifacts → record):
//!
//! - [`spec`]: the request as the AWS API defines it, checked against botocore's own service
//!   model so unknown fields, types and constraints are refused in AWS's words.
//! - [`job`]: the validated, resolved plan: hosts `algo-1..N`, instance groups, channels,
//!   resource caps, and what the request asks that a workstation cannot honour.
//! - [`resources`]: instance types (vCPU, memory) and the share of this machine a container
//!   may take while the system keeps its reserve.
//! - [`stage`]: each host's `/opt/ml` tree: the three config files and the channel data.
//! - [`storage`]: the only module that talks to object storage (`object_store`: S3, any
//!   S3-compatible server, local folders).
//! - [`docker`]: the only module that talks to the Docker Engine (bollard).
//! - [`run`]: drives one job: stage, start, stream logs, stop on shutdown or max runtime,
//!   collect, upload, and keep the record current. A failed algorithm is an outcome.
//! - [`logs`]: container output to per-host log files, the terminal and the metric
//!   recorder; reading logs back, live.
//! - [`log_events`]: a host's log with each line's time, read by time or position
//!   (CloudWatch's view of it).
//! - [`metrics`]: `MetricDefinitions` applied to every log line; the series and final values.
//! - [`plot`]: the metrics as an SVG chart.
//! - [`checkpoints`]: `CheckpointConfig`: restore before start, sync while training.
//! - [`collect`]: the hosts' model and output folders streamed to `model.tar.gz` /
//!   `output.tar.gz` at the output path (tar, [`gzip`] on every core, multipart upload).
//! - [`artifacts`]: the merged tar of several hosts' folders, symlinks kept as links.
//! - [`gzip`]: parallel gzip that stores blocks which do not compress.
//! - [`cache`]: the content cache of S3 inputs, with parallel ranged downloads.
//! - [`record`]: the `DescribeTrainingJob`-shaped record and its status transitions.
//! - [`store`]: the state directory: job records (written atomically), logs, work files.
//! - [`cleanup`]: leftovers of runs whose smlocal process died: Docker objects removed,
//!   records marked `Failed`.
//! - [`listing`]: ListTrainingJobs' filters, sort orders and page tokens over the store.
//! - [`relay`]: a loopback S3 endpoint made reachable from containers (script mode).
//!
//! - [`api`]: `smlocal serve`: the SageMaker training API and the CloudWatch Logs reads over
//!   HTTP (AWS JSON 1.1), on [`runner`], which admits jobs and runs them in the background.
//!
//! - [`check`]: `smlocal check IMAGE`: the contract checks, built on [`run`].
//!
//! The library installs no signal handlers: [`run::run`] takes a shutdown token, and the
//! binary (`src/main.rs`, `src/cli.rs`) turns Ctrl-C into it.

pub mod api;
pub mod artifacts;
pub mod cache;
pub mod check;
pub mod checkpoints;
pub mod cleanup;
pub mod collect;
pub mod docker;
pub mod gzip;
pub mod job;
pub mod listing;
pub mod log_events;
pub mod logs;
pub mod metrics;
pub mod plot;
pub mod record;
pub mod relay;
pub mod resources;
pub mod run;
pub mod runner;
pub mod spec;
pub mod stage;
pub mod storage;
pub mod store;
