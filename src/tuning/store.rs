//! Tuning jobs in the state directory: `tuning-jobs/<name>/record.json` (written beside and
//! renamed over: never half-written), the lock its runner holds and the marker a stop
//! request leaves, so `smlocal serve`, `smlocal tune` and every client see one truth.

use super::record::TuningRecord;
use crate::hosting::store::HostingStoreError as TuningStoreError;
use crate::state::index::{Index, Kind, Records, Row};
use crate::state::listing::{ListError, ListQuery, Page};
use std::path::{Path, PathBuf};

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TuningStoreError + 'a {
    move |source| TuningStoreError::Io { action, path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub(crate) struct TuningStore {
    root: PathBuf,
    index: std::sync::Arc<Index>,
}

impl Records for TuningStore {
    fn kind(&self) -> Kind {
        Kind::TuningJob
    }

    fn folder(&self) -> PathBuf {
        self.root.clone()
    }

    fn names(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|e| e.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    fn row(&self, name: &str) -> Option<Row> {
        match self.load(name) {
            Ok(Some(r)) => Some(Row {
                name: r.name.clone(),
                created: r.creation_time,
                modified: r.last_modified_time,
                status: r.status.as_str().into(),
                summary: r.list_summary(),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("not listing tuning job {name}: {e}");
                None
            }
        }
    }
}

impl TuningStore {
    pub(crate) fn new(state_root: &Path) -> Self {
        TuningStore { root: state_root.join("tuning-jobs"), index: std::sync::Arc::new(Index::new(state_root)) }
    }

    fn job_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Reserves the name and writes the first record; `false` when the name is taken.
    pub(crate) fn create(&self, record: &TuningRecord) -> Result<bool, TuningStoreError> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let dir = self.job_dir(&record.name);
        let intent = self.index.intend(self, &record.name);
        let created = match std::fs::create_dir(&dir) {
            Ok(()) => self.write(record).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io("create", &dir)(e)),
        };
        self.index.wrote(self, intent, &record.name, self.row(&record.name).as_ref());
        created
    }

    pub(crate) fn save(&self, record: &TuningRecord) -> Result<(), TuningStoreError> {
        let intent = self.index.intend(self, &record.name);
        let written = self.write(record);
        self.index.wrote(self, intent, &record.name, self.row(&record.name).as_ref());
        written
    }

    fn write(&self, record: &TuningRecord) -> Result<(), TuningStoreError> {
        let path = self.job_dir(&record.name).join("record.json");
        crate::hosting::store::write_record(&path, record, false).map(drop)
    }

    pub(crate) fn load(&self, name: &str) -> Result<Option<TuningRecord>, TuningStoreError> {
        if !crate::hosting::store::is_name(name) {
            return Ok(None);
        }
        let path = self.job_dir(name).join("record.json");
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| TuningStoreError::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// ListHyperParameterTuningJobs's page, from the index.
    pub(crate) fn page(&self, query: &ListQuery) -> Result<Page, ListError> {
        // AWS's default page size.
        self.index.page(self, query, 10)
    }

    fn stop_marker(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("stop-requested")
    }

    pub(crate) fn request_stop(&self, name: &str) -> Result<(), TuningStoreError> {
        let path = self.stop_marker(name);
        std::fs::write(&path, b"").map_err(io("write", &path))
    }

    pub(crate) fn stop_requested(&self, name: &str) -> bool {
        self.stop_marker(name).exists()
    }

    /// A lock held by the process running the tuning job while it runs; None when another
    /// process holds it.
    pub(crate) fn claim(&self, name: &str) -> Option<std::fs::File> {
        let path = self.job_dir(name).join("runner.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
        Some(file)
    }

    /// Whether a live process runs the tuning job (its runner holds the lock).
    pub(crate) fn is_running(&self, name: &str) -> bool {
        let path = self.job_dir(name).join("runner.lock");
        let Ok(file) = std::fs::OpenOptions::new().read(true).open(path) else {
            return false;
        };
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
    }
}
