//! The content cache in the state directory: S3 objects keyed by bucket, key, version (ETag,
//! else last-modified time) and size, so a re-run with unchanged inputs downloads nothing and
//! a changed object is fetched again. Downloads are parallel and bounded, large objects in
//! ranges, each written to a temporary file that enters the cache only once complete and of
//! the right size. Least-recently-used entries are evicted past a size limit.

use crate::storage::{ObjectInfo, Storage, StorageError};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Requests in flight at once, objects and ranges together.
pub(crate) const PARALLEL_REQUESTS: usize = 8;
/// Objects at least this big are fetched in ranges, several at once.
const RANGED_FROM: u64 = 32 << 20;
const RANGE: u64 = 16 << 20;
/// The entries' folder under the cache root. Entries are named by SHA-256, which no Rust
/// release changes.
const OBJECTS: &str = "sha256";
/// Where smlocal before the SHA-256 keys kept its entries, named by `std`'s `DefaultHasher`,
/// whose algorithm may change with any Rust release (turning every entry into a miss that
/// stays as garbage). It is dropped once, with a note, and the cache fills again as jobs run.
const UNSTABLE_OBJECTS: &str = "objects";
/// The default size limit (`SMLOCAL_CACHE_MAX` overrides it).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 20 << 30;

/// Counters a progress display reads while staging runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes the channels need.
    pub total: AtomicU64,
    /// Bytes fetched from storage so far.
    pub fetched: AtomicU64,
    /// Bytes found in the cache.
    pub cached: AtomicU64,
    /// Set when staging is over (all channels, every host).
    pub finished: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
}

/// One object to have in the cache.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub uri: String,
    pub info: ObjectInfo,
}

/// How full the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub entries: usize,
    pub bytes: u64,
}

impl Cache {
    pub fn new(state_root: &Path) -> Self {
        let max_bytes = std::env::var("SMLOCAL_CACHE_MAX")
            .ok()
            .and_then(|v| crate::resources::parse_size(&v))
            .unwrap_or(DEFAULT_MAX_BYTES);
        let cache = Cache { root: state_root.join("cache"), max_bytes };
        if let Some(dropped) = cache.drop_unstable_entries() {
            tracing::info!(
                "cache: dropped {} object(s) ({}) that an earlier smlocal keyed by an unstable hash; they are fetched again when used",
                dropped.entries,
                crate::resources::human_bytes(dropped.bytes)
            );
        }
        cache
    }

    /// Removes the entries of the unstable-hash layout, if there are any. Running jobs
    /// hold hard links to what they use, so they lose nothing.
    fn drop_unstable_entries(&self) -> Option<Usage> {
        let old = self.root.join(UNSTABLE_OBJECTS);
        let usage = usage_of(&old)?;
        std::fs::remove_dir_all(&old).ok()?;
        Some(usage)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where an object version lives in the cache.
    pub fn path_of(&self, uri: &str, info: &ObjectInfo) -> PathBuf {
        let version = match &info.etag {
            Some(etag) => format!("e{}", etag.trim_matches('"')),
            None => format!("m{}", info.modified_ms),
        };
        self.root.join(OBJECTS).join(entry_name(uri, &version, info.size))
    }

    /// Makes sure every object is in the cache and returns their paths, in order. Only the
    /// missing ones are fetched. The file-system work before and after the downloads (cache
    /// lookups, temporary files, renames, eviction) runs on a blocking thread, off the async
    /// workers that carry the downloads.
    pub async fn fetch(
        &self,
        storage: &Storage,
        wanted: &[Wanted],
        progress: &Progress,
    ) -> Result<Vec<PathBuf>, StorageError> {
        progress.total.fetch_add(wanted.iter().map(|w| w.info.size).sum(), Ordering::Relaxed);
        let (cache, list) = (self.clone(), wanted.to_vec());
        let plan = blocking(&self.root, move || cache.plan(&list)).await?;
        progress.cached.fetch_add(plan.cached_bytes, Ordering::Relaxed);

        let mut parts = Vec::new();
        for (i, miss) in plan.misses.iter().enumerate() {
            let size = wanted[miss.wanted].info.size;
            if size >= RANGED_FROM {
                let mut start = 0;
                while start < size {
                    let end = (start + RANGE).min(size);
                    parts.push((i, Some(start..end)));
                    start = end;
                }
            } else {
                parts.push((i, None));
            }
        }
        let results: Vec<(usize, Result<u64, StorageError>)> =
            futures::stream::iter(parts.into_iter().map(|(i, range)| {
                let (w, part) = (&wanted[plan.misses[i].wanted], &plan.misses[i].part);
                let download = async move {
                    let offset = range.as_ref().map(|r| r.start).unwrap_or(0);
                    // Opened for this part only: however many objects a channel has, at most
                    // PARALLEL_REQUESTS files are open at once.
                    let file = std::fs::OpenOptions::new().write(true).open(part).map_err(cache_io(part))?;
                    storage.download_part(&w.uri, range, w.info.etag.as_deref(), &file, offset).await
                };
                async move {
                    let n = download.await;
                    if let Ok(n) = &n {
                        progress.fetched.fetch_add(*n, Ordering::Relaxed);
                    }
                    (i, n)
                }
            }))
            .buffer_unordered(PARALLEL_REQUESTS)
            .collect()
            .await;
        let mut written = vec![Some(0u64); plan.misses.len()];
        let mut failed = None;
        for (i, result) in results {
            match result {
                Ok(n) => written[i] = written[i].map(|w| w + n),
                Err(e) => {
                    written[i] = None;
                    failed.get_or_insert(e);
                }
            }
        }
        let (cache, list) = (self.clone(), wanted.to_vec());
        blocking(&self.root, move || cache.commit(plan, &list, written, failed)).await
    }

    /// Which objects are here (marked as just used) and which are missing, each missing one
    /// with its temporary file made at its full size.
    fn plan(&self, wanted: &[Wanted]) -> Result<Plan, StorageError> {
        let objects = self.root.join(OBJECTS);
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&objects).map_err(cache_io(&objects))?;
        std::fs::create_dir_all(&tmp).map_err(cache_io(&tmp))?;
        remove_abandoned(&tmp);
        let paths: Vec<PathBuf> = wanted.iter().map(|w| self.path_of(&w.uri, &w.info)).collect();
        let mut plan = Plan { paths: paths.clone(), cached_bytes: 0, misses: Vec::new() };
        let mut planned = std::collections::HashSet::new();
        for (i, (w, path)) in wanted.iter().zip(paths).enumerate() {
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == w.info.size) {
                touch(&path);
                plan.cached_bytes += w.info.size;
                continue;
            }
            if !planned.insert(path.clone()) {
                continue;
            }
            let part = tmp.join(format!(
                "{}.{}.partial",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("object"),
                std::process::id()
            ));
            let made = std::fs::File::create(&part).and_then(|file| file.set_len(w.info.size));
            if let Err(e) = made {
                // Nothing of a plan that cannot be made is left behind.
                let _ = std::fs::remove_file(&part);
                plan.misses.iter().for_each(|m| drop(std::fs::remove_file(&m.part)));
                return Err(cache_io(&part)(e));
            }
            plan.misses.push(Miss { wanted: i, path, part });
        }
        Ok(plan)
    }

    /// Moves every complete download into the cache and drops the rest: a half-written
    /// download never enters it. Then evicts past the size limit, keeping this job's entries.
    fn commit(
        &self,
        plan: Plan,
        wanted: &[Wanted],
        written: Vec<Option<u64>>,
        mut failed: Option<StorageError>,
    ) -> Result<Vec<PathBuf>, StorageError> {
        for (miss, got) in plan.misses.into_iter().zip(written) {
            let w = &wanted[miss.wanted];
            // Every byte must have arrived.
            let complete = got == Some(w.info.size);
            if let (false, Some(got), None) = (complete, got, &failed) {
                failed = Some(StorageError::Incomplete { uri: w.uri.clone(), expected: w.info.size, got });
            }
            if complete {
                std::fs::rename(&miss.part, &miss.path).map_err(cache_io(&miss.path))?;
            } else {
                let _ = std::fs::remove_file(&miss.part);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.evict(&plan.paths);
        Ok(plan.paths)
    }

    pub fn usage(&self) -> Usage {
        let entries = self.entries();
        Usage { entries: entries.len(), bytes: entries.iter().map(|e| e.1).sum() }
    }

    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        entries_of(&self.root.join(OBJECTS))
    }

    /// Removes least-recently-used entries until the cache holds at most `max_bytes`.
    /// Returns what was removed. Jobs that use an entry hold a hard link, so removing it
    /// never takes data from a running job.
    pub fn prune(&self, max_bytes: u64) -> Usage {
        self.prune_keeping(max_bytes, &[])
    }

    fn prune_keeping(&self, max_bytes: u64, keep: &[PathBuf]) -> Usage {
        let mut entries = self.entries();
        entries.sort_by_key(|e| e.2);
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let mut removed = Usage::default();
        for (path, len, _) in entries {
            if total <= max_bytes {
                break;
            }
            if keep.contains(&path) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed.entries += 1;
                removed.bytes += len;
            }
        }
        removed
    }

    fn evict(&self, in_use: &[PathBuf]) {
        let removed = self.prune_keeping(self.max_bytes, in_use);
        if removed.entries > 0 {
            tracing::info!(
                "cache: evicted {} least recently used object(s), {}, to stay under {}",
                removed.entries,
                crate::resources::human_bytes(removed.bytes),
                crate::resources::human_bytes(self.max_bytes)
            );
        }
    }
}

/// What [`Cache::fetch`] found before downloading.
struct Plan {
    /// Every wanted object's entry, in order.
    paths: Vec<PathBuf>,
    cached_bytes: u64,
    misses: Vec<Miss>,
}

/// A missing object: its index among the wanted ones, its entry, and the temporary file
/// (open for writing) it is downloaded into.
struct Miss {
    wanted: usize,
    path: PathBuf,
    part: PathBuf,
}

fn cache_io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { action: "cannot write the cache at", path, source }
}

/// Runs file-system work on a blocking thread.
async fn blocking<T: Send + 'static>(
    root: &Path,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(StorageError::Io { action: "cannot update the cache at", path: root, source: std::io::Error::other(e) })
    })
}

/// The entry of one object version: SHA-256 over the URI, the version and the size, each
/// length-prefixed so no two different triples hash the same bytes.
fn entry_name(uri: &str, version: &str, size: u64) -> String {
    let mut hash = Sha256::new();
    for part in [uri.as_bytes(), version.as_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update(size.to_le_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn entries_of(folder: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        })
        .collect()
}

/// What a folder of entries holds, or None when it does not exist.
fn usage_of(folder: &Path) -> Option<Usage> {
    if !folder.is_dir() {
        return None;
    }
    let entries = entries_of(folder);
    Some(Usage { entries: entries.len(), bytes: entries.iter().map(|e| e.1).sum() })
}

/// Deletes partial downloads whose process is gone (a run stopped mid-download): they never
/// become entries, and would otherwise only take space.
fn remove_abandoned(tmp: &Path) {
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner =
            name.strip_suffix(".partial").and_then(|n| n.rsplit('.').next()).and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Marks an entry as just used (least-recently-used eviction reads the modification time).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64, etag: Option<&str>, modified_ms: i64) -> ObjectInfo {
        ObjectInfo { key: "k".into(), size, etag: etag.map(str::to_string), modified_ms }
    }

    #[test]
    fn a_new_version_gets_a_new_entry() {
        let cache = Cache { root: PathBuf::from("/c"), max_bytes: 1 };
        let a = cache.path_of("s3://b/k", &info(3, Some("\"abc\""), 1));
        assert_eq!(a, cache.path_of("s3://b/k", &info(3, Some("abc"), 2)), "the ETag decides when there is one");
        assert_ne!(a, cache.path_of("s3://b/k", &info(3, Some("abd"), 1)));
        assert_ne!(a, cache.path_of("s3://b/k", &info(4, Some("abc"), 1)));
        assert_ne!(a, cache.path_of("s3://b/other", &info(3, Some("abc"), 1)));
        let m = cache.path_of("s3://b/k", &info(3, None, 1));
        assert_ne!(m, cache.path_of("s3://b/k", &info(3, None, 2)), "without an ETag, the modification time decides");
    }

    #[test]
    fn entry_names_are_sha256_and_do_not_depend_on_the_toolchain() {
        let cache = Cache { root: PathBuf::from("/c"), max_bytes: 1 };
        // Computed outside Rust: sha256(le64(12) "s3://b/k.csv" le64(4) "eabc" le64(3)).
        assert_eq!(
            cache.path_of("s3://b/k.csv", &info(3, Some("\"abc\""), 1)),
            PathBuf::from("/c/sha256/ed8930c8968ee4bb39706ac90e88f5839f23d230b16ad6d96c99c6faa7f21e90")
        );
    }

    #[test]
    fn the_unstable_hash_layout_is_dropped_once_with_its_size_and_then_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let old = state.join("cache/objects");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("00112233445566778899aabbccddeeff"), vec![1u8; 10]).unwrap();
        std::fs::write(old.join("ffeeddccbbaa99887766554433221100"), vec![2u8; 5]).unwrap();
        let probe = Cache { root: state.join("cache"), max_bytes: 1 << 30 };
        assert_eq!(probe.drop_unstable_entries(), Some(Usage { entries: 2, bytes: 15 }));
        assert!(!old.exists(), "no entry of the old layout is ever served");
        assert_eq!(probe.drop_unstable_entries(), None, "dropped once");
        let cache = Cache::new(state);
        assert_eq!(cache.usage(), Usage::default());
        std::fs::create_dir_all(state.join("cache/sha256")).unwrap();
        std::fs::write(cache.path_of("s3://b/k", &info(1, Some("e"), 1)), b"x").unwrap();
        assert_eq!(Cache::new(state).usage(), Usage { entries: 1, bytes: 1 }, "new entries survive a restart");
    }

    #[test]
    fn partial_downloads_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("abc.{}.partial", u32::MAX - 1));
        let mine = dir.path().join(format!("def.{}.partial", std::process::id()));
        std::fs::write(&dead, "x").unwrap();
        std::fs::write(&mine, "x").unwrap();
        remove_abandoned(dir.path());
        assert!(!dead.exists() && mine.exists());
    }

    #[test]
    fn pruning_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache { root: dir.path().to_path_buf(), max_bytes: 1 << 30 };
        let objects = dir.path().join(OBJECTS);
        std::fs::create_dir_all(&objects).unwrap();
        let now = SystemTime::now();
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let p = objects.join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(100 - i as u64 * 10)).unwrap();
        }
        assert_eq!(cache.usage(), Usage { entries: 3, bytes: 300 });
        assert_eq!(cache.prune(150), Usage { entries: 2, bytes: 200 });
        assert!(objects.join("new").exists() && !objects.join("old").exists() && !objects.join("mid").exists());
        assert_eq!(cache.prune(0), Usage { entries: 1, bytes: 100 });
    }
}
