//! Records kept one folder each, `<root>/<name>/record.json` (written beside and renamed
//! over: never half-written), with the markers beside it: `stop-requested` (a stop asked by
//! any process) and `runner.lock` (held by the process running it). Creating the folder is
//! what reserves a name. Every write keeps the index ([`crate::state::index`]) beside it.
//! Transform and tuning jobs are kept this way.

use crate::hosting::store::{HostingStoreError as StoreError, is_name, write_record};
use crate::state::index::{Index, Records};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub(crate) struct RecordFolders {
    root: PathBuf,
    index: Arc<Index>,
}

impl RecordFolders {
    /// `state_root/<folder>/`, listed through the state directory's index.
    pub(crate) fn new(state_root: &Path, folder: &str) -> Self {
        RecordFolders { root: state_root.join(folder), index: Arc::new(Index::new(state_root)) }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|e| e.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    /// Reserves `name` and writes its first record; `false` when the name is taken.
    pub(crate) fn create(&self, rows: &dyn Records, name: &str, record: &impl Serialize) -> Result<bool, StoreError> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let dir = self.dir(name);
        let intent = self.index.intend(rows, name);
        let created = match std::fs::create_dir(&dir) {
            Ok(()) => self.write(name, record).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io("create", &dir)(e)),
        };
        self.index.wrote(rows, intent, name, rows.row(name).as_ref());
        created
    }

    pub(crate) fn save(&self, rows: &dyn Records, name: &str, record: &impl Serialize) -> Result<(), StoreError> {
        let intent = self.index.intend(rows, name);
        let written = self.write(name, record);
        self.index.wrote(rows, intent, name, rows.row(name).as_ref());
        written
    }

    fn write(&self, name: &str, record: &impl Serialize) -> Result<(), StoreError> {
        write_record(&self.dir(name).join("record.json"), record, false).map(drop)
    }

    pub(crate) fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        if !is_name(name) {
            return Ok(None);
        }
        let path = self.dir(name).join("record.json");
        match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).map(Some).map_err(|e| StoreError::Corrupt { path, reason: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    fn stop_marker(&self, name: &str) -> PathBuf {
        self.dir(name).join("stop-requested")
    }

    pub(crate) fn request_stop(&self, name: &str) -> Result<(), StoreError> {
        let path = self.stop_marker(name);
        std::fs::write(&path, b"").map_err(io("write", &path))
    }

    pub(crate) fn stop_requested(&self, name: &str) -> bool {
        self.stop_marker(name).exists()
    }

    /// The lock the process running `name` holds while it runs; None when another holds it.
    pub(crate) fn claim(&self, name: &str) -> Option<std::fs::File> {
        let path = self.dir(name).join("runner.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
        Some(file)
    }

    /// Whether a live process holds `name`'s runner lock.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        let Ok(file) = std::fs::File::open(self.dir(name).join("runner.lock")) else {
            return false;
        };
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
    }
}
