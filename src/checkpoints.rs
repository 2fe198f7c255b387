//! `CheckpointConfig`: before a host starts, the objects under `S3Uri` are copied into its
//! checkpoint folder; while it trains, new and changed files (and deletions) are synced back
//! to `S3Uri` every few seconds and once more at the end. Files are not tarred, and every host
//! syncs to the one location, as on SageMaker.

use crate::stage::safe_relative;
use crate::storage::{Location, Storage, StorageError};
use crate::tree::{Beneath, EntryKind, TreeError};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

/// What a file looked like when it was last synced: a change in either means upload again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
}

/// `S3Uri` as a folder: keys below it are the checkpoint files' relative paths.
fn folder(uri: &str) -> String {
    if uri.ends_with('/') { uri.to_string() } else { format!("{uri}/") }
}

/// Copies every checkpoint object into `dir`. A location with nothing there yet (a first run)
/// restores nothing.
pub(crate) async fn restore(storage: &Storage, uri: &str, dir: &Path) -> Result<usize, StorageError> {
    let base = folder(uri);
    let location = Location::parse(&base)?;
    let prefix = location.key().to_string();
    let objects = match storage.list(&base).await {
        Ok(objects) => objects,
        Err(StorageError::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut restored = 0;
    for object in objects {
        let rest = &object.key[prefix.len()..];
        let Some(relative) = safe_relative(rest) else {
            tracing::warn!("skipping checkpoint object '{}': it would land outside {}", object.key, dir.display());
            continue;
        };
        let dest = dir.join(relative);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
                action: "cannot create",
                path: parent.into(),
                source,
            })?;
        }
        storage.download(&location.uri_of(&object.key), &dest).await?;
        restored += 1;
    }
    Ok(restored)
}

/// Why a sync did not finish; the next one tries again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A host's checkpoint folder (or a file in it) is a link or cannot be read: it is
    /// never followed, and nothing is deleted at `S3Uri` on a partial view.
    #[error("checkpoint folder: {0}")]
    Folder(#[from] TreeError),
}

/// Keeps `S3Uri` in step with the hosts' checkpoint folders. The containers write them
/// while this reads, so every folder and file is opened through [`crate::tree`]: a file
/// swapped for a link between the scan and the upload is refused, not followed.
pub(crate) struct Syncer {
    storage: Storage,
    uri: String,
    dirs: Vec<Beneath>,
    synced: BTreeMap<String, Stamp>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct SyncReport {
    pub uploaded: usize,
    pub deleted: usize,
}

impl Syncer {
    /// `dirs` are the hosts' folders, just restored: what they hold is already at `uri`.
    pub(crate) fn new(storage: &Storage, uri: &str, dirs: Vec<Beneath>) -> Self {
        // Unreadable now means nothing is known to be synced: the first sync uploads all.
        let synced = scan(&dirs).unwrap_or_default().into_iter().map(|(rel, (stamp, _))| (rel, stamp)).collect();
        Syncer { storage: storage.clone(), uri: folder(uri), dirs, synced }
    }

    pub(crate) async fn sync(&mut self) -> Result<SyncReport, SyncError> {
        // The walk is blocking file I/O over every checkpoint file: off the async workers.
        let dirs = self.dirs.clone();
        // A walk that could not finish syncs nothing: an empty scan would delete every
        // checkpoint at S3Uri.
        let now = match tokio::task::spawn_blocking(move || scan(&dirs)).await {
            Ok(Ok(now)) => now,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Ok(SyncReport::default()),
        };

        let mut report = SyncReport::default();
        for (rel, (stamp, host)) in &now {
            if self.synced.get(rel) != Some(stamp) {
                let folder = &self.dirs[*host];
                let file = folder.open(Path::new(rel))?;
                self.storage.upload_file(file, &folder.path().join(rel), &format!("{}{rel}", self.uri)).await?;
                self.synced.insert(rel.clone(), *stamp);
                report.uploaded += 1;
            }
        }
        let gone: Vec<String> = self.synced.keys().filter(|rel| !now.contains_key(*rel)).cloned().collect();
        for rel in gone {
            self.storage.delete(&format!("{}{rel}", self.uri)).await?;
            self.synced.remove(&rel);
            report.deleted += 1;
        }
        Ok(report)
    }
}

/// Every file in any host's folder, the most recently modified copy when several hosts
/// have the same path. Links are not followed (a checkpoint folder may point anywhere on
/// this machine) and not synced. A folder that cannot be read fails the scan: a partial one
/// would delete what it missed from `S3Uri`.
fn scan(dirs: &[Beneath]) -> Result<BTreeMap<String, (Stamp, usize)>, TreeError> {
    let mut found: BTreeMap<String, (Stamp, usize)> = BTreeMap::new();
    for (host, dir) in dirs.iter().enumerate() {
        let walked = dir.walk(&mut |e| {
            let EntryKind::File { len, modified } = e.kind else {
                return;
            };
            let stamp = Stamp { len, modified };
            let rel = e.relative.to_string_lossy().into_owned();
            if found.get(&rel).is_none_or(|(s, _)| stamp.modified > s.modified) {
                found.insert(rel, (stamp, host));
            }
        });
        match walked {
            Ok(()) => {}
            // A host's folder that is not there yet holds nothing.
            Err(e) if e.is_not_found() && !dir.path().exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn restore_then_sync_uploads_changes_and_deletions_only() {
        let remote = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/ckpt", remote.path().display());
        std::fs::create_dir_all(remote.path().join("ckpt/sub")).unwrap();
        std::fs::write(remote.path().join("ckpt/epoch-1.bin"), b"one").unwrap();
        std::fs::write(remote.path().join("ckpt/sub/state.json"), b"{}").unwrap();

        let host = tempfile::tempdir().unwrap();
        let storage = Storage::new(Default::default());
        assert_eq!(restore(&storage, &uri, host.path()).await.unwrap(), 2);
        assert_eq!(std::fs::read(host.path().join("sub/state.json")).unwrap(), b"{}");

        let mut syncer = Syncer::new(&storage, &uri, vec![Beneath::folder(host.path())]);
        assert_eq!(syncer.sync().await.unwrap(), SyncReport::default(), "nothing changed yet");
        std::fs::write(host.path().join("epoch-2.bin"), b"two").unwrap();
        std::fs::remove_file(host.path().join("epoch-1.bin")).unwrap();
        assert_eq!(syncer.sync().await.unwrap(), SyncReport { uploaded: 1, deleted: 1 });
        assert_eq!(std::fs::read(remote.path().join("ckpt/epoch-2.bin")).unwrap(), b"two");
        assert!(!remote.path().join("ckpt/epoch-1.bin").exists());
    }

    #[tokio::test]
    async fn a_first_run_restores_nothing() {
        let host = tempfile::tempdir().unwrap();
        assert_eq!(
            restore(&Storage::new(Default::default()), "file:///no/such/smlocal/checkpoints", host.path())
                .await
                .unwrap(),
            0
        );
    }
}
