//! The state directory (`$SMLOCAL_HOME`, default `~/.smlocal`): one folder per job holding its
//! record (written atomically: never half-written), its logs and, while it runs, its work
//! files. Creating the folder is what reserves a job name, so two runs cannot share one.

pub(crate) mod details;
pub(crate) mod folders;
pub(crate) mod index;
pub(crate) mod listing;
pub(crate) mod record;

use crate::spec::AwsErrorKind;
use crate::state::index::{Index, Kind, Records, Row};
use crate::state::listing::{ListError, ListQuery, Page};
use crate::state::record::{Record, Status};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "Training job names must be unique within an AWS account and region, and a training job with this name already exists ({arn})"
    )]
    ResourceInUse { arn: String },
    #[error("Requested resource not found: no training job named '{0}'")]
    NotFound(String),
    #[error("The training job {name} is already {status}; there is nothing to stop")]
    AlreadyEnded { name: String, status: Status },
    #[error("the training job {0} is still running; stop it first (smlocal stop {0})")]
    StillRunning(String),
    #[error(transparent)]
    List(#[from] ListError),
    #[error("the job record '{}' is unreadable: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot {action} '{}': {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    pub fn aws_kind(&self) -> AwsErrorKind {
        match self {
            StateError::ResourceInUse { .. } => AwsErrorKind::ResourceInUse,
            // SageMaker answers an unknown or finished job with ValidationException.
            StateError::NotFound(_)
            | StateError::AlreadyEnded { .. }
            | StateError::StillRunning(_)
            | StateError::List(_) => AwsErrorKind::Validation,
            StateError::Corrupt { .. } | StateError::Io { .. } => AwsErrorKind::Internal,
        }
    }
}

/// Space set aside in each running job's folder: freed when a record save finds the disk
/// full, so the job's last record can still be written (a record is a few KiB).
const RESERVE: &str = ".space-reserve";
const RESERVE_BYTES: usize = 64 << 10;

/// The file in a job's folder that asks its runner to stop.
const STOP_MARKER: &str = "stop-requested";
/// The file in a job's folder that names the process running it.
const RUNNER_PID: &str = "runner.pid";

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// What ListTrainingJobs (and the other List operations) read; kept beside every write.
    index: Arc<Index>,
}

/// The training jobs' records, as the index reads them.
struct TrainingJobs<'a>(&'a StateDir);

impl Records for TrainingJobs<'_> {
    fn kind(&self) -> Kind {
        Kind::TrainingJob
    }

    fn folder(&self) -> PathBuf {
        self.0.root.join("jobs")
    }

    fn names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.folder()) else { return Vec::new() };
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| is_job_name(n)).collect()
    }

    fn row(&self, name: &str) -> Option<Row> {
        match self.0.load(name) {
            Ok(record) => Some(row_of(&record)),
            Err(StateError::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!("not listing job {name}: {e}");
                None
            }
        }
    }
}

fn row_of(record: &Record) -> Row {
    Row {
        name: record.training_job_name.clone(),
        created: record.creation_time,
        modified: record.last_modified_time,
        status: record.training_job_status.as_str().into(),
        summary: record.summary(),
    }
}

impl StateDir {
    /// A store at `root`; the path is made absolute so that every process names the same
    /// state directory the same way (it labels Docker objects).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root: PathBuf = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        StateDir { index: Arc::new(Index::new(&root)), root }
    }

    /// `$SMLOCAL_HOME`, else `~/.smlocal`.
    pub fn from_env() -> Self {
        let root = std::env::var_os("SMLOCAL_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".smlocal")))
            .unwrap_or_else(|| PathBuf::from(".smlocal"));
        StateDir::new(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `jobs/<name>`: everything of one job (only here and below are its paths joined).
    pub fn job_dir(&self, name: &str) -> PathBuf {
        self.root.join("jobs").join(name)
    }

    /// `jobs/<name>/logs`: one `<host>.log` per host.
    pub fn logs_dir(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("logs")
    }

    /// `jobs/<name>/logs/<host>.log`.
    pub fn log_path(&self, name: &str, host: &str) -> PathBuf {
        self.logs_dir(name).join(format!("{host}.log"))
    }

    /// `jobs/<name>/work`: the hosts' `/opt/ml` trees and channel layers while the job runs.
    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("work")
    }

    /// [`StateDir::work_dir`] with every symbolic link of the state directory's path resolved:
    /// what the containers' binds and the channels' overlay layers name. It fails when the
    /// job's folder does not exist.
    pub fn resolved_work_dir(&self, name: &str) -> std::io::Result<PathBuf> {
        Ok(std::fs::canonicalize(self.job_dir(name))?.join("work"))
    }

    /// `jobs/<name>/artifacts`: where archives are kept when their upload failed.
    pub fn artifacts_dir(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("artifacts")
    }

    /// `jobs/<name>/metrics.jsonl`: every metric point, in order.
    pub fn metrics_path(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("metrics.jsonl")
    }

    /// `jobs/<name>/placement.json`: the caps each host's container got ([`details`]).
    pub(crate) fn placement_path(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("placement.json")
    }

    /// `jobs/<name>/staged.json`: what each channel staged for each host ([`details`]).
    pub(crate) fn staged_path(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("staged.json")
    }

    /// `jobs/<name>/metrics.svg`: the plot `smlocal metrics` draws.
    pub fn plot_path(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("metrics.svg")
    }

    /// Reserves `record`'s name and writes its first version.
    pub fn create(&self, record: &Record) -> Result<PathBuf, StateError> {
        let jobs = self.root.join("jobs");
        std::fs::create_dir_all(&jobs).map_err(io("create", &jobs))?;
        let name = &record.training_job_name;
        let dir = self.job_dir(name);
        let intent = self.index.intend(&TrainingJobs(self), name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) => {
                // The mark is cleared with the row of whatever record is there.
                self.index.wrote(&TrainingJobs(self), intent, name, TrainingJobs(self).row(name).as_ref());
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return Err(StateError::ResourceInUse { arn: record.training_job_arn.clone() });
                }
                return Err(io("create", &dir)(e));
            }
        }
        let written = self.save_record(record);
        self.index.wrote(&TrainingJobs(self), intent, name, written.is_ok().then(|| row_of(record)).as_ref());
        written?;
        // Best effort: a disk too full for it is too full for the job anyway.
        if let Err(e) = std::fs::write(dir.join(RESERVE), vec![0u8; RESERVE_BYTES]) {
            tracing::debug!("no space reserve for {}: {e}", record.training_job_name);
        }
        Ok(dir)
    }

    /// Gives back the space [`StateDir::create`] set aside, once the job's record is final.
    pub(crate) fn release_reserve(&self, name: &str) {
        let _ = std::fs::remove_file(self.job_dir(name).join(RESERVE));
    }

    /// Writes the record beside its final place and renames it over, so a reader sees the
    /// old record or the new one, never a mix.
    /// When the disk is full, the job's space reserve is given up and the save tried again.
    /// The index's row follows the record.
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let name = &record.training_job_name;
        let intent = self.index.intend(&TrainingJobs(self), name);
        let written = self.save_record(record);
        let row = match &written {
            Ok(()) => Some(row_of(record)),
            Err(_) => TrainingJobs(self).row(name),
        };
        self.index.wrote(&TrainingJobs(self), intent, name, row.as_ref());
        written
    }

    fn save_record(&self, record: &Record) -> Result<(), StateError> {
        match self.write_record(record) {
            Err(StateError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull
                    && std::fs::remove_file(self.job_dir(&record.training_job_name).join(RESERVE)).is_ok() =>
            {
                tracing::warn!("the disk of {} is full: used the space kept for the job's record", self.root.display());
                self.write_record(record)
            }
            written => written,
        }
    }

    fn write_record(&self, record: &Record) -> Result<(), StateError> {
        let dir = self.job_dir(&record.training_job_name);
        let path = dir.join("record.json");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io("write", &path))?;
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        tmp.write_all(&text).and_then(|_| tmp.as_file().sync_all()).map_err(io("write", &path))?;
        tmp.persist(&path).map_err(|e| io("write", &path)(e.error))?;
        Ok(())
    }

    pub fn load(&self, name: &str) -> Result<Record, StateError> {
        // Names come from API clients too: only what a TrainingJobName may hold, so no name
        // can reach outside `jobs/`.
        if !is_job_name(name) {
            return Err(StateError::NotFound(name.into()));
        }
        let path = self.job_dir(name).join("record.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(name.into()));
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let mut record: Record =
            serde_json::from_slice(&text).map_err(|e| StateError::Corrupt { path, reason: e.to_string() })?;
        // A stop is `Stopping` from the moment it is asked for, as on AWS, though the runner
        // writes it only once it acts on it (a poll later).
        if record.training_job_status == Status::InProgress && self.stop_requested(name) {
            record.stopping("Stopping the training job");
        }
        Ok(record)
    }

    /// Asks the process running `name` to stop it, as StopTrainingJob does. The runner looks
    /// for the marker; the record stays the runner's to write.
    pub fn request_stop(&self, name: &str) -> Result<Record, StateError> {
        let record = self.load(name)?;
        if record.training_job_status.is_terminal() {
            return Err(StateError::AlreadyEnded { name: name.into(), status: record.training_job_status });
        }
        let marker = self.job_dir(name).join(STOP_MARKER);
        let intent = self.index.intend(&TrainingJobs(self), name);
        let marked = std::fs::write(&marker, b"").map_err(io("write", &marker));
        // Listed as Stopping from now on, as it is described.
        self.index.wrote(&TrainingJobs(self), intent, name, TrainingJobs(self).row(name).as_ref());
        marked?;
        Ok(record)
    }

    /// Records which process runs the job, so other commands can tell a live job from one
    /// whose runner died: the runner holds an exclusive lock on the file for as long as it
    /// runs the job, and the kernel drops it when the process dies, however it dies. (A
    /// process ID alone is reused; a lock is not.)
    pub fn claim(&self, name: &str) -> Result<(), StateError> {
        let path = self.job_dir(name).join(RUNNER_PID);
        let file = std::fs::File::create(&path).map_err(io("write", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io("lock", &path)(e.into()))?;
        std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes()).map_err(io("write", &path))?;
        claims().lock().unwrap_or_else(|p| p.into_inner()).insert(path, file);
        Ok(())
    }

    /// Lets go of a job this process ran (its record is final), and of its space reserve.
    pub(crate) fn release(&self, name: &str) {
        self.release_reserve(name);
        claims().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.job_dir(name).join(RUNNER_PID));
    }

    /// Whether the job's runner is alive: a job that is not terminal and whose runner died
    /// is a leftover.
    pub fn is_running(&self, record: &Record) -> bool {
        if record.training_job_status.is_terminal() {
            return false;
        }
        let Ok(file) = std::fs::File::open(self.job_dir(&record.training_job_name).join(RUNNER_PID)) else {
            return false;
        };
        // Held: a live process runs the job (this one too: a lock taken through another open
        // file conflicts even within one process).
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
                false
            }
            Err(e) => e == rustix::io::Errno::WOULDBLOCK,
        }
    }

    /// Deletes a finished job's record, logs and local files (never its uploaded artifacts).
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let record = self.load(name)?;
        if self.is_running(&record) {
            return Err(StateError::StillRunning(name.into()));
        }
        let dir = self.job_dir(name);
        let intent = self.index.intend(&TrainingJobs(self), name);
        let removed = std::fs::remove_dir_all(&dir).map_err(io("remove", &dir));
        self.index.wrote(&TrainingJobs(self), intent, name, TrainingJobs(self).row(name).as_ref());
        removed
    }

    /// The page of training jobs `query` asks for (ListTrainingJobs), from the index;
    /// `default_max` is the page size when the query names none.
    pub fn list_page(&self, query: &ListQuery, default_max: usize) -> Result<Page, StateError> {
        Ok(self.index.page(&TrainingJobs(self), query, default_max)?)
    }

    pub fn stop_requested(&self, name: &str) -> bool {
        self.job_dir(name).join(STOP_MARKER).exists()
    }

    /// Every job, newest first.
    pub fn list(&self) -> Result<Vec<Record>, StateError> {
        let jobs = self.root.join("jobs");
        let entries = match std::fs::read_dir(&jobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &jobs)(e)),
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match self.load(&name) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("skipping job folder {name}: {e}"),
            }
        }
        records.sort_by(|a, b| b.creation_time.total_cmp(&a.creation_time));
        Ok(records)
    }
}

/// The runner locks of the jobs this process runs, held until [`StateDir::release`].
fn claims() -> &'static std::sync::Mutex<std::collections::HashMap<PathBuf, std::fs::File>> {
    static CLAIMS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, std::fs::File>>> =
        std::sync::OnceLock::new();
    CLAIMS.get_or_init(Default::default)
}

/// A TrainingJobName as the API defines it: `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`.
fn is_job_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record::new(name, &format!("arn:{name}"), "s3://b/m", &serde_json::Map::new())
    }

    #[test]
    fn names_are_reserved_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path());
        store.create(&record("a")).unwrap();
        let err = store.create(&record("a")).unwrap_err();
        assert!(matches!(err, StateError::ResourceInUse { .. }));
        assert_eq!(err.aws_kind(), AwsErrorKind::ResourceInUse);
        assert!(err.to_string().ends_with("already exists (arn:a)"), "AWS's words, no hint: {err}");
    }

    #[test]
    fn saves_replace_the_record_and_list_is_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path());
        let mut first = record("first");
        first.creation_time = 1.0;
        store.create(&first).unwrap();
        let mut second = record("second");
        second.creation_time = 2.0;
        store.create(&second).unwrap();
        first.complete();
        store.save(&first).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|r| r.training_job_name).collect();
        assert_eq!(names, ["second", "first"]);
        assert_eq!(store.load("first").unwrap().training_job_status, Status::Completed);
        assert!(matches!(store.load("nope"), Err(StateError::NotFound(_))));
        // A name from a client can never point outside the jobs folder.
        std::fs::write(dir.path().join("record.json"), b"{}").unwrap();
        assert!(matches!(store.load("../"), Err(StateError::NotFound(_))));
        assert!(matches!(store.load("jobs/../.."), Err(StateError::NotFound(_))));
        let files = || -> Vec<_> {
            let mut names: Vec<_> =
                std::fs::read_dir(store.job_dir("first")).unwrap().flatten().map(|e| e.file_name()).collect();
            names.sort();
            names
        };
        assert_eq!(files(), [RESERVE, "record.json"], "a running job keeps space for its last record");
        store.release_reserve("first");
        assert_eq!(files(), ["record.json"]);
    }
}
