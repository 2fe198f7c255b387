//! Tuning jobs in the state directory: `tuning-jobs/<name>/record.json` with its runner lock
//! and stop marker ([`RecordFolders`]), so `smlocal serve`, `smlocal tune` and every client
//! see one truth.

use super::record::TuningRecord;
use crate::hosting::store::HostingStoreError as TuningStoreError;
use crate::state::folders::RecordFolders;
use crate::state::index::{Kind, Records, Row};
use crate::state::listing::{ListError, ListQuery, Page};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub(crate) struct TuningStore {
    folders: RecordFolders,
}

impl Records for TuningStore {
    fn kind(&self) -> Kind {
        Kind::TuningJob
    }

    fn folder(&self) -> PathBuf {
        self.folders.root().to_path_buf()
    }

    fn names(&self) -> Vec<String> {
        self.folders.names()
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
        TuningStore { folders: RecordFolders::new(state_root, "tuning-jobs") }
    }

    /// Reserves the name and writes the first record; `false` when the name is taken.
    pub(crate) fn create(&self, record: &TuningRecord) -> Result<bool, TuningStoreError> {
        self.folders.create(self, &record.name, record)
    }

    pub(crate) fn save(&self, record: &TuningRecord) -> Result<(), TuningStoreError> {
        self.folders.save(self, &record.name, record)
    }

    pub(crate) fn load(&self, name: &str) -> Result<Option<TuningRecord>, TuningStoreError> {
        self.folders.load(name)
    }

    /// ListHyperParameterTuningJobs's page, from the index.
    pub(crate) fn page(&self, query: &ListQuery) -> Result<Page, ListError> {
        // AWS's default page size.
        self.folders.index().page(self, query, 10)
    }

    pub(crate) fn request_stop(&self, name: &str) -> Result<(), TuningStoreError> {
        self.folders.request_stop(name)
    }

    pub(crate) fn stop_requested(&self, name: &str) -> bool {
        self.folders.stop_requested(name)
    }

    pub(crate) fn claim(&self, name: &str) -> Option<std::fs::File> {
        self.folders.claim(name)
    }

    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.folders.is_running(name)
    }
}
