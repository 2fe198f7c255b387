//! The content cache in the state directory: S3 objects keyed by bucket, key, version (ETag,
//! else last-modified time) and size, so a re-run with unchanged inputs downloads nothing and
//! a changed object is fetched again. Downloads are parallel and bounded, large objects in
//! ranges, each written to a temporary file that enters the cache only once complete and of
//! the right size. Least-recently-used entries are evicted past a size limit.

use crate::storage::{ObjectInfo, Storage, StorageError};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// How long downloads may receive nothing before smlocal says so (at most).
const STALL_NOTICE: std::time::Duration = std::time::Duration::from_secs(10);
/// Objects at least this big are fetched in ranges, several at once.
const RANGED_FROM: u64 = 32 << 20;
const RANGE: u64 = 16 << 20;
/// The entries' folder under the cache root. Entries are named by SHA-256, which no Rust
/// release changes.
const OBJECTS: &str = "sha256";
/// One lock file per entry (named as the entry), beside the entries.
const LOCKS: &str = "locks";
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

    /// Makes sure every object is in the cache and returns, in order, a pin of each: a
    /// hard link in `pins` (a folder of the job's own) that eviction cannot take away. Only
    /// the missing ones are fetched, and each by one fetcher at a time, whatever the number
    /// of jobs and processes that want it: an entry's lock (`locks/<entry>`, `flock`) is
    /// held while it is fetched; the others wait for it and then find it here. Locks and
    /// files are opened only for the objects in flight, so however many a channel has, a
    /// job holds a few dozen descriptors. The file-system work that can wait (lookups,
    /// renames, eviction) runs on blocking threads, off the async workers.
    pub async fn fetch(
        &self,
        storage: &Storage,
        wanted: &[Wanted],
        progress: &Progress,
        pins: &Path,
    ) -> Result<Vec<PathBuf>, StorageError> {
        progress.total.fetch_add(wanted.iter().map(|w| w.info.size).sum(), Ordering::Relaxed);
        let (cache, list, pins_at) = (self.clone(), wanted.to_vec(), pins.to_path_buf());
        let (mut todo, cached) = blocking(&self.root, move || {
            for dir in [cache.root.join(OBJECTS), cache.root.join("tmp"), cache.root.join(LOCKS), pins_at.clone()] {
                std::fs::create_dir_all(&dir).map_err(cache_io(&dir))?;
            }
            remove_abandoned(&cache.root.join("tmp"));
            cache.pin_present_of(&list, &(0..list.len()).collect::<Vec<_>>(), &pins_at)
        })
        .await?;
        progress.cached.fetch_add(cached, Ordering::Relaxed);
        while !todo.is_empty() {
            let busy = self.fetch_round(storage, wanted, &todo, pins, progress).await?;
            if busy.is_empty() {
                break;
            }
            // Another fetcher has these: wait until it is done with each (its lock, taken
            // and let go at once, so no one waits while holding), then look again. What it
            // failed to fetch is fetched in the next round.
            let (cache, list, pins_at) = (self.clone(), wanted.to_vec(), pins.to_path_buf());
            let (left, cached) = blocking(&self.root, move || {
                for &i in &busy {
                    let lock_path = cache.root.join(LOCKS).join(cache.entry_of(&list[i]));
                    drop(EntryLock::acquire(&lock_path, true).map_err(cache_io(&lock_path))?);
                }
                cache.pin_present_of(&list, &busy, &pins_at)
            })
            .await?;
            progress.cached.fetch_add(cached, Ordering::Relaxed);
            todo = left;
        }
        let (cache, keep) = (self.clone(), wanted.iter().map(|w| self.path_of(&w.uri, &w.info)).collect::<Vec<_>>());
        blocking(&self.root, move || {
            cache.evict(&keep);
            Ok(())
        })
        .await?;
        Ok(wanted.iter().map(|w| pins.join(self.entry_of(w))).collect())
    }

    /// The entry's file name.
    fn entry_of(&self, w: &Wanted) -> String {
        self.path_of(&w.uri, &w.info).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Pins every object of `these` (indices into `wanted`) already here, marking it as just
    /// used; returns the indices of the missing ones (each entry once) and the bytes found.
    /// No lock is needed: an entry is complete once it has its name, and a hard link either
    /// pins it or finds it gone (evicted), then it is missing.
    fn pin_present_of(
        &self,
        wanted: &[Wanted],
        these: &[usize],
        pins: &Path,
    ) -> Result<(Vec<usize>, u64), StorageError> {
        let (mut missing, mut cached) = (Vec::new(), 0);
        let mut seen = std::collections::HashSet::new();
        for &i in these {
            let w = &wanted[i];
            let name = self.entry_of(w);
            if !seen.insert(name.clone()) {
                continue;
            }
            let entry = self.root.join(OBJECTS).join(&name);
            if pin(&entry, &pins.join(&name))? {
                touch(&entry);
                cached += w.info.size;
            } else {
                missing.push(i);
            }
        }
        Ok((missing, cached))
    }

    /// Claims and downloads the objects `todo` (indices into `wanted`), objects and ranges in
    /// parallel; at the first error the rest are cancelled (a dead or frozen server fails
    /// staging once, not once per object). An object is claimed only when a request slot is
    /// free for it, so only the objects in flight hold a lock. Returns the objects another
    /// fetcher holds.
    async fn fetch_round(
        &self,
        storage: &Storage,
        wanted: &[Wanted],
        todo: &[usize],
        pins: &Path,
        progress: &Progress,
    ) -> Result<Vec<usize>, StorageError> {
        let mut busy = Vec::new();
        let mut claims = todo.iter().copied();
        let mut ranges: std::collections::VecDeque<(usize, Arc<Fetching>, Option<std::ops::Range<u64>>)> =
            Default::default();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        // A stall is reported while it lasts, before the requests' own timeout ends it.
        let notice = (storage.read_timeout() / 2).min(STALL_NOTICE);
        let mut ticks = tokio::time::interval(notice);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen, mut quiet_since) = (progress.fetched.load(Ordering::Relaxed), tokio::time::Instant::now());
        let mut reported = false;
        loop {
            while in_flight.len() < storage.parallel_requests() {
                if let Some((i, fetching, range)) = ranges.pop_front() {
                    let w: &Wanted = &wanted[i];
                    in_flight.push(async move { fetching.part(storage, w, range, progress).await });
                    continue;
                }
                let Some(i) = claims.next() else { break };
                match self.claim(&wanted[i], pins)? {
                    Claim::Busy => busy.push(i),
                    Claim::Present => {
                        progress.cached.fetch_add(wanted[i].info.size, Ordering::Relaxed);
                    }
                    Claim::Fetch(fetching) => {
                        ranges.extend(fetching.ranges().into_iter().map(|r| (i, fetching.clone(), r)));
                    }
                }
            }
            if in_flight.is_empty() {
                return Ok(busy);
            }
            tokio::select! {
                done = in_flight.next() => {
                    if let Some(result) = done {
                        result?;
                    }
                }
                _ = ticks.tick() => {
                    let now = progress.fetched.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, quiet_since, reported) = (now, tokio::time::Instant::now(), false);
                    } else if !reported && quiet_since.elapsed() >= notice {
                        reported = true;
                        tracing::warn!(
                            "staging stalled: nothing received from S3{} for {:.0} s; a request that hears nothing for {:.0} s fails (SMLOCAL_S3_TIMEOUT)",
                            storage.endpoint().map(|e| format!(" at {e}")).unwrap_or_default(),
                            quiet_since.elapsed().as_secs_f64(),
                            storage.read_timeout().as_secs_f64()
                        );
                    }
                }
            }
        }
    }

    /// Takes the entry's lock, if no one holds it, and, unless another fetcher completed the
    /// entry meanwhile, makes its temporary file at full size. (A few system calls on local
    /// files, none of which waits.)
    fn claim(&self, w: &Wanted, pins: &Path) -> Result<Claim, StorageError> {
        let name = self.entry_of(w);
        let lock_path = self.root.join(LOCKS).join(&name);
        let Some(lock) = EntryLock::acquire(&lock_path, false).map_err(cache_io(&lock_path))? else {
            return Ok(Claim::Busy);
        };
        let (entry, pin_path) = (self.root.join(OBJECTS).join(&name), pins.join(&name));
        if pin(&entry, &pin_path)? {
            return Ok(Claim::Present);
        }
        let seq = PART_SEQ.fetch_add(1, Ordering::Relaxed);
        let part = self.root.join("tmp").join(format!("{name}.{}.{seq}.partial", std::process::id()));
        if let Err(e) = std::fs::File::create(&part).and_then(|file| file.set_len(w.info.size)) {
            let _ = std::fs::remove_file(&part);
            return Err(cache_io(&part)(e));
        }
        Ok(Claim::Fetch(Arc::new(Fetching {
            entry,
            part,
            pin: pin_path,
            size: w.info.size,
            remaining: AtomicU64::new(ranges_of(w.info.size).len() as u64),
            written: AtomicU64::new(0),
            committed: AtomicBool::new(false),
            _lock: lock,
        })))
    }

    /// The entry of an object already here, opened for reading (an open file stays readable
    /// whatever eviction does after), marked as just used; `None` when it is not here.
    pub(crate) fn open_present(&self, uri: &str, info: &ObjectInfo) -> Option<std::fs::File> {
        let entry = self.path_of(uri, info);
        let file = std::fs::File::open(&entry).ok()?;
        touch(&entry);
        Some(file)
    }

    /// Starts writing an object into the cache as it streams past (Pipe mode reads it from
    /// S3 once and keeps it for the next epoch and the next job). `None` when it is already
    /// here or another fetcher holds it, or the cache cannot take it: the stream goes on
    /// without a copy.
    pub(crate) fn begin_fill(&self, uri: &str, info: &ObjectInfo) -> Option<Filler> {
        let name = self.path_of(uri, info).file_name()?.to_string_lossy().into_owned();
        for dir in [self.root.join(OBJECTS), self.root.join("tmp"), self.root.join(LOCKS)] {
            std::fs::create_dir_all(&dir).ok()?;
        }
        if info.size > self.max_bytes {
            return None;
        }
        let lock = EntryLock::acquire(&self.root.join(LOCKS).join(&name), false).ok()??;
        let entry = self.root.join(OBJECTS).join(&name);
        if entry.exists() {
            return None;
        }
        let seq = PART_SEQ.fetch_add(1, Ordering::Relaxed);
        let part = self.root.join("tmp").join(format!("{name}.{}.{seq}.partial", std::process::id()));
        let file = std::fs::File::create(&part).ok()?;
        Some(Filler { entry, part, size: info.size, written: 0, file: Some(file), _lock: lock })
    }

    /// Evicts least recently used entries past the size limit (after fills, which do not).
    pub(crate) fn trim(&self) {
        self.evict(&[]);
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
        // A cache an earlier smlocal made has no lock files yet.
        let _ = std::fs::create_dir_all(self.root.join(LOCKS));
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let mut removed = Usage::default();
        for (path, len, _) in entries {
            if total <= max_bytes {
                break;
            }
            if keep.contains(&path) {
                continue;
            }
            // An entry being fetched or pinned right now is someone's: skip it.
            let lock_path = self.root.join(LOCKS).join(path.file_name().unwrap_or_default());
            let Ok(Some(lock)) = EntryLock::acquire(&lock_path, false) else {
                continue;
            };
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed.entries += 1;
                removed.bytes += len;
            }
            lock.remove();
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

/// What claiming a missing object found.
enum Claim {
    /// Another fetcher holds it.
    Busy,
    /// Another fetcher completed it meanwhile; it is pinned.
    Present,
    /// This job fetches it.
    Fetch(Arc<Fetching>),
}

/// A missing object this job fetches: its entry, its temporary file, its pin, and the
/// entry's lock, held until the last of its ranges is in and the entry committed. Dropped
/// before that (an error, a cancelled job), it deletes the temporary file.
struct Fetching {
    entry: PathBuf,
    part: PathBuf,
    pin: PathBuf,
    size: u64,
    /// Ranges still downloading.
    remaining: AtomicU64,
    written: AtomicU64,
    committed: AtomicBool,
    _lock: EntryLock,
}

impl Fetching {
    /// The object's ranges: the whole of a small one, 16 MiB ranges of a large one.
    fn ranges(&self) -> Vec<Option<std::ops::Range<u64>>> {
        ranges_of(self.size)
    }

    /// Downloads one range; the last one to finish commits the entry.
    async fn part(
        &self,
        storage: &Storage,
        w: &Wanted,
        range: Option<std::ops::Range<u64>>,
        progress: &Progress,
    ) -> Result<(), StorageError> {
        let offset = range.as_ref().map(|r| r.start).unwrap_or(0);
        // Opened for this range only: at most `SMLOCAL_S3_REQUESTS` files are open at once.
        let file = std::fs::OpenOptions::new().write(true).open(&self.part).map_err(cache_io(&self.part))?;
        let n = storage.download_part(&w.uri, range, w.info.etag.as_deref(), &file, offset).await?;
        drop(file);
        progress.fetched.fetch_add(n, Ordering::Relaxed);
        let written = self.written.fetch_add(n, Ordering::SeqCst) + n;
        if self.remaining.fetch_sub(1, Ordering::SeqCst) != 1 {
            return Ok(());
        }
        // Every byte must have arrived before the entry has its name.
        if written != self.size {
            return Err(StorageError::Incomplete { uri: w.uri.clone(), expected: self.size, got: written });
        }
        // Two metadata calls on a local disk, here rather than on a blocking thread: for a
        // small object the hand-off (two thread wake-ups) cost more than the calls.
        std::fs::rename(&self.part, &self.entry).map_err(cache_io(&self.entry))?;
        pin(&self.entry, &self.pin)?;
        self.committed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// An object entering the cache while it streams to a reader (see [`Cache::begin_fill`]).
/// It becomes the entry only when every byte of it has arrived; dropped before that (an
/// early close, an error), its temporary file is deleted.
pub(crate) struct Filler {
    entry: PathBuf,
    part: PathBuf,
    size: u64,
    written: u64,
    /// None once a write failed: the stream goes on, the entry is not made.
    file: Option<std::fs::File>,
    _lock: EntryLock,
}

impl Filler {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if let Some(file) = &mut self.file {
            match file.write_all(bytes) {
                Ok(()) => self.written += bytes.len() as u64,
                Err(e) => {
                    tracing::debug!("cache: not keeping {}: {e}", self.entry.display());
                    self.file = None;
                }
            }
        }
    }

    /// Names the entry, if all of it was written.
    pub(crate) fn commit(mut self) {
        if self.file.take().is_some() && self.written == self.size && std::fs::rename(&self.part, &self.entry).is_ok() {
            self.written = u64::MAX;
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if self.written != u64::MAX {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// An exclusive `flock` on an entry's lock file: the one fetcher (or evictor) of that entry,
/// across every job and every smlocal process sharing the state directory. The kernel drops
/// it when its holder dies, so a crashed fetcher never blocks the next one.
struct EntryLock {
    file: std::fs::File,
    path: PathBuf,
}

impl EntryLock {
    /// The lock, waiting for it when `wait`; None when another holds it and not `wait`.
    fn acquire(path: &Path, wait: bool) -> std::io::Result<Option<EntryLock>> {
        use rustix::fs::FlockOperation;
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
            let operation = if wait { FlockOperation::LockExclusive } else { FlockOperation::NonBlockingLockExclusive };
            match rustix::fs::flock(&file, operation) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            // An evictor may have removed the lock file between the open and the lock; a
            // lock on a removed file excludes no one, so take the one at the path instead.
            let held = file.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(EntryLock { file, path: path.to_path_buf() }));
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file while holding it (its entry is gone), then releases it.
    fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// The ranges an object of `size` is fetched in: all of it, or 16 MiB ranges from 32 MiB.
fn ranges_of(size: u64) -> Vec<Option<std::ops::Range<u64>>> {
    if size >= RANGED_FROM {
        (0..size).step_by(RANGE as usize).map(|start| Some(start..(start + RANGE).min(size))).collect()
    } else {
        vec![None]
    }
}

/// Names each temporary file apart, so two jobs of one process never share one.
static PART_SEQ: AtomicU64 = AtomicU64::new(0);

/// Pins an entry: a hard link the job owns (a copy where links are not possible). Returns
/// false when the entry is not there. One already pinned is the same entry, pinned by
/// another channel of the job.
fn pin(entry: &Path, pin: &Path) -> Result<bool, StorageError> {
    match std::fs::hard_link(entry, pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(_) => match std::fs::copy(entry, pin) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(cache_io(pin)(e)),
        },
    }
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
        // `<entry>.<pid>.<seq>.partial` (and `<entry>.<pid>.partial` of earlier releases).
        let owner = name.strip_suffix(".partial").and_then(|n| n.split('.').nth(1)).and_then(|p| p.parse::<u32>().ok());
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
    fn an_entry_has_one_holder_and_a_removed_lock_file_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry");
        let held = EntryLock::acquire(&path, false).unwrap().expect("free");
        assert!(EntryLock::acquire(&path, false).unwrap().is_none(), "a second holder in the same process");
        // The evictor removes the lock file while holding it; a new fetcher gets the new one.
        held.remove();
        assert!(!path.exists());
        let again = EntryLock::acquire(&path, false).unwrap().expect("free again");
        assert!(path.exists());
        drop(again);
        assert!(EntryLock::acquire(&path, true).unwrap().is_some(), "released on drop");
    }

    #[test]
    fn partial_downloads_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("abc.{}.7.partial", u32::MAX - 1));
        let old_style = dir.path().join(format!("abd.{}.partial", u32::MAX - 1));
        std::fs::write(&old_style, "x").unwrap();
        let mine = dir.path().join(format!("def.{}.3.partial", std::process::id()));
        std::fs::write(&dead, "x").unwrap();
        std::fs::write(&mine, "x").unwrap();
        remove_abandoned(dir.path());
        assert!(!dead.exists() && !old_style.exists() && mine.exists());
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
