//! The bytes of one piece of an epoch (an object, or an augmented manifest attribute), read
//! on the feed's own thread: from the cache when the object is there, else from storage in
//! ranges ([`FIRST_RANGE`], then [`RANGE`] bytes), each read whole as fast as the network
//! gives it (so a reader that pauses never stalls a request into its timeout) and copied
//! into the cache on the way, for the next epoch; decompressed when the channel is `Gzip`.
//! The first range of the next objects and the next ranges of this one are requested while
//! this one is written, so neither small objects far away nor one large one cost a round
//! trip each.

use super::{FeedError, Piece};
use crate::cache::{Cache, Filler};
use crate::storage::{Body, ObjectInfo, Opened, Storage, StorageError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::Read;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Objects whose first range is requested ahead of the piece being written.
const AHEAD: usize = 8;

/// The bytes one request reads after an object's first: with [`AHEAD`] and [`DEPTH`], what
/// a feed holds in memory is bounded (at most 8 first ranges and 4 ranges, 24 MiB).
const RANGE: u64 = 4 << 20;

/// An object's first request: small, so its first byte reaches the FIFO soon.
const FIRST_RANGE: u64 = 1 << 20;

/// The first request of an object nobody asked for ahead (an epoch's first, cold): smaller
/// still, since the reader is waiting for it.
const WAITED_RANGE: u64 = 64 << 10;

/// Ranges of the object being written that are requested ahead of the one being copied.
const DEPTH: usize = 3;

/// A decompressed object up to this size is framed from memory; a larger one is spilled to a
/// temporary file first (a RecordIO header needs the length before the payload).
const SPILL_FROM: usize = 16 << 20;

/// A piece ready to copy: its bytes, and their number when known before reading them.
pub(crate) struct Opening {
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) size: Option<u64>,
}

/// Opens pieces in order, with requests for the next ones already sent.
pub(crate) struct Sources {
    handle: Handle,
    storage: Storage,
    /// None when the channel's objects are not kept (see `Feed::fill_cache`).
    cache: Option<Cache>,
    lookup: Cache,
    gzip: bool,
    ahead: VecDeque<(usize, JoinHandle<Result<Opened, StorageError>>)>,
}

impl Sources {
    pub(crate) fn new(handle: Handle, storage: Storage, cache: Cache, fill: bool, gzip: bool) -> Self {
        Sources { handle, storage, cache: fill.then(|| cache.clone()), lookup: cache, gzip, ahead: VecDeque::new() }
    }

    /// Opens `pieces[at]` and sends the requests for the objects after it: once its own
    /// first range is in, so its first byte never waits behind theirs.
    pub(crate) fn open(&mut self, pieces: &[Piece], at: usize) -> Result<Opening, FeedError> {
        while self.ahead.front().is_some_and(|(i, _)| *i < at) {
            if let Some((_, task)) = self.ahead.pop_front() {
                task.abort();
            }
        }
        let (uri, info) = match &pieces[at] {
            Piece::Text(bytes) => {
                self.send_ahead(pieces, at);
                return Ok(Opening {
                    reader: Box::new(std::io::Cursor::new(bytes.clone())),
                    size: Some(bytes.len() as u64),
                });
            }
            Piece::Object { uri, info } => (uri, info),
        };
        let plain: Opening = match info.as_ref().and_then(|i| self.lookup.open_present(uri, i).map(|f| (f, i.size))) {
            Some((file, size)) => {
                self.send_ahead(pieces, at);
                Opening { reader: Box::new(file), size: Some(size) }
            }
            None => {
                let task = match self.ahead.front() {
                    Some((i, _)) if *i == at => self.ahead.pop_front().map(|(_, task)| task),
                    _ => None,
                };
                let task = task.unwrap_or_else(|| {
                    let (storage, uri, info) = (self.storage.clone(), uri.clone(), info.clone());
                    self.handle.spawn(async move { storage.open(&uri, info.as_ref(), WAITED_RANGE).await })
                });
                let opened = self.handle.block_on(task).unwrap_or_else(|e| {
                    Err(StorageError::Io { action: "cannot read", path: uri.into(), source: std::io::Error::other(e) })
                });
                self.send_ahead(pieces, at);
                let opened = opened.map_err(|source| FeedError::Source { uri: uri.clone(), source })?;
                self.stream(uri, info.as_ref(), opened)
            }
        };
        if !self.gzip {
            return Ok(plain);
        }
        let decoder = flate2::read::MultiGzDecoder::new(plain.reader);
        Ok(Opening { reader: Box::new(decoder), size: None })
    }

    /// Sends the first-range requests of the objects after `at` (up to [`AHEAD`] of them)
    /// that are not already asked for or cached.
    fn send_ahead(&mut self, pieces: &[Piece], at: usize) {
        let next = self.ahead.back().map(|(i, _)| i + 1).unwrap_or(at + 1).max(at + 1);
        let window = pieces.iter().enumerate().take(at + 1 + AHEAD).skip(next);
        for (i, piece) in window {
            if let Piece::Object { uri, info } = piece
                && !self.cached(uri, info.as_ref())
            {
                let (storage, uri) = (self.storage.clone(), uri.clone());
                let info = info.clone();
                self.ahead.push_back((
                    i,
                    self.handle.spawn(async move { storage.open(&uri, info.as_ref(), FIRST_RANGE).await }),
                ));
            }
        }
    }

    /// Whether the object is in the cache now (its request need not be sent ahead).
    fn cached(&self, uri: &str, info: Option<&ObjectInfo>) -> bool {
        info.is_some_and(|i| self.lookup.path_of(uri, i).exists())
    }

    /// An object as its ranges arrive, kept in the cache under the version the listing named
    /// (the one the next epoch looks up: a listing and a GET need not both carry an ETag),
    /// or the one asked for when nothing was listed. One whose size changed since it was
    /// listed is not kept.
    fn stream(&self, uri: &str, listed: Option<&ObjectInfo>, opened: Opened) -> Opening {
        let size = Some(opened.info.size);
        let version = match listed {
            Some(l) if l.size == opened.info.size => Some(l),
            Some(_) => None,
            None => Some(&opened.info),
        };
        match opened.body {
            Body::File(file) => Opening { reader: Box::new(file), size },
            Body::Ranged { first } => {
                let fill = self.cache.as_ref().zip(version).and_then(|(c, v)| c.begin_fill(uri, v));
                let reader = RangedRead {
                    handle: self.handle.clone(),
                    storage: self.storage.clone(),
                    uri: uri.to_string(),
                    etag: opened.info.etag.clone(),
                    size: opened.info.size,
                    requested: first.len() as u64,
                    pending: VecDeque::new(),
                    chunk: Bytes::new(),
                    fill,
                };
                let mut reader = reader;
                reader.arrived(first);
                Opening { reader: Box::new(reader), size }
            }
        }
    }

    /// What a piece holds, with its length known: read whole into memory or a temporary file
    /// when its length is not known before (a decompressed object).
    pub(crate) fn sized(opening: Opening, uri: &str) -> Result<(Box<dyn Read + Send>, u64), FeedError> {
        if let Some(size) = opening.size {
            return Ok((opening.reader, size));
        }
        let read_err = |source| FeedError::Read { uri: uri.to_string(), source };
        let mut reader = opening.reader;
        let mut memory = Vec::new();
        (&mut reader).take(SPILL_FROM as u64 + 1).read_to_end(&mut memory).map_err(read_err)?;
        if memory.len() <= SPILL_FROM {
            let size = memory.len() as u64;
            return Ok((Box::new(std::io::Cursor::new(memory)), size));
        }
        let mut spill = tempfile::tempfile().map_err(|source| FeedError::Spill { source })?;
        std::io::Write::write_all(&mut spill, &memory).map_err(|source| FeedError::Spill { source })?;
        let rest = std::io::copy(&mut reader, &mut spill).map_err(read_err)?;
        std::io::Seek::rewind(&mut spill).map_err(|source| FeedError::Spill { source })?;
        Ok((Box::new(spill), memory.len() as u64 + rest))
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        for (_, task) in self.ahead.drain(..) {
            task.abort();
        }
    }
}

/// An S3 object read as a file is: range after range, the next [`DEPTH`] requested while
/// one is copied, each copied into the cache as it passes.
struct RangedRead {
    handle: Handle,
    storage: Storage,
    uri: String,
    etag: Option<String>,
    size: u64,
    /// Bytes of the object requested so far (the next range starts here).
    requested: u64,
    pending: VecDeque<JoinHandle<Result<Bytes, StorageError>>>,
    chunk: Bytes,
    fill: Option<Filler>,
}

impl RangedRead {
    /// Takes in a range that arrived; the cache entry is committed once the last has.
    fn arrived(&mut self, bytes: Bytes) {
        if let Some(fill) = &mut self.fill {
            fill.write(&bytes);
        }
        self.chunk = bytes;
        self.request_ahead();
        if self.requested >= self.size
            && self.pending.is_empty()
            && let Some(fill) = self.fill.take()
        {
            fill.commit();
        }
    }

    fn request_ahead(&mut self) {
        while self.pending.len() < DEPTH && self.requested < self.size {
            let range = self.requested..(self.requested + RANGE).min(self.size);
            self.requested = range.end;
            let (storage, uri, etag) = (self.storage.clone(), self.uri.clone(), self.etag.clone());
            self.pending
                .push_back(self.handle.spawn(async move { storage.read_range(&uri, range, etag.as_deref()).await }));
        }
    }
}

impl Read for RangedRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(next) = self.pending.pop_front() else {
                return Ok(0);
            };
            match self.handle.block_on(next) {
                Ok(Ok(bytes)) if !bytes.is_empty() => self.arrived(bytes),
                Ok(Ok(_)) => {
                    self.fill = None;
                    return Err(std::io::Error::other(format!("{} ended before its listed size", self.uri)));
                }
                Ok(Err(e)) => {
                    self.fill = None;
                    return Err(std::io::Error::other(e));
                }
                Err(e) => {
                    self.fill = None;
                    return Err(std::io::Error::other(e));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

impl Drop for RangedRead {
    fn drop(&mut self) {
        for task in self.pending.drain(..) {
            task.abort();
        }
    }
}
