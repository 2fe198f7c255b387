//! The bytes of one piece of an epoch (an object, or an augmented manifest attribute), read
//! on the feed's own thread: from the cache when the object is there, else straight from
//! storage as the response arrives (copied into the cache on the way, for the next epoch),
//! decompressed when the channel is `Gzip`. The next objects' requests are sent while this
//! one is written, so a channel of small objects far away is not one round trip per object.

use super::{FeedError, Piece};
use crate::cache::{Cache, Filler};
use crate::storage::{Body, ObjectInfo, Opened, Storage, StorageError};
use futures::StreamExt;
use std::collections::VecDeque;
use std::io::Read;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Requests sent ahead of the piece being written.
const AHEAD: usize = 8;

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

    /// Opens `pieces[at]`, first sending the requests for the objects after it.
    pub(crate) fn open(&mut self, pieces: &[Piece], at: usize) -> Result<Opening, FeedError> {
        while self.ahead.front().is_some_and(|(i, _)| *i < at) {
            if let Some((_, task)) = self.ahead.pop_front() {
                task.abort();
            }
        }
        let next = self.ahead.back().map(|(i, _)| i + 1).unwrap_or(at + 1).max(at + 1);
        let window = pieces.iter().enumerate().take(at + 1 + AHEAD).skip(next);
        for (i, piece) in window {
            if let Piece::Object { uri, info } = piece
                && !self.cached(uri, info.as_ref())
            {
                let (storage, uri) = (self.storage.clone(), uri.clone());
                self.ahead.push_back((i, self.handle.spawn(async move { storage.open(&uri).await })));
            }
        }
        let (uri, info) = match &pieces[at] {
            Piece::Text(bytes) => {
                return Ok(Opening {
                    reader: Box::new(std::io::Cursor::new(bytes.clone())),
                    size: Some(bytes.len() as u64),
                });
            }
            Piece::Object { uri, info } => (uri, info),
        };
        let plain: Opening = match info.as_ref().and_then(|i| self.lookup.open_present(uri, i).map(|f| (f, i.size))) {
            Some((file, size)) => Opening { reader: Box::new(file), size: Some(size) },
            None => {
                let opened = match self.ahead.front() {
                    Some((i, _)) if *i == at => {
                        let (_, task) = self.ahead.pop_front().expect("front was just seen");
                        self.handle.block_on(task).unwrap_or_else(|e| {
                            Err(StorageError::Io {
                                action: "cannot read",
                                path: uri.into(),
                                source: std::io::Error::other(e),
                            })
                        })
                    }
                    _ => self.handle.block_on(self.storage.open(uri)),
                }
                .map_err(|source| FeedError::Source { uri: uri.clone(), source })?;
                self.stream(uri, info.as_ref(), opened)
            }
        };
        if !self.gzip {
            return Ok(plain);
        }
        let decoder = flate2::read::MultiGzDecoder::new(plain.reader);
        Ok(Opening { reader: Box::new(decoder), size: None })
    }

    /// Whether the object is in the cache now (its request need not be sent ahead).
    fn cached(&self, uri: &str, info: Option<&ObjectInfo>) -> bool {
        info.is_some_and(|i| self.lookup.path_of(uri, i).exists())
    }

    /// An object as it arrives, kept in the cache under the version the listing named (the
    /// one the next epoch looks up: a listing and a GET need not both carry an ETag), or the
    /// GET's own when nothing was listed. One whose size changed since it was listed is not
    /// kept.
    fn stream(&self, uri: &str, listed: Option<&ObjectInfo>, opened: Opened) -> Opening {
        let size = Some(opened.info.size);
        let version = match listed {
            Some(l) if l.size == opened.info.size => Some(l),
            Some(_) => None,
            None => Some(&opened.info),
        };
        match opened.body {
            Body::File(file) => Opening { reader: Box::new(file), size },
            Body::Stream(stream) => {
                let fill = self.cache.as_ref().zip(version).and_then(|(c, v)| c.begin_fill(uri, v));
                let reader =
                    StreamRead { handle: self.handle.clone(), stream, chunk: bytes::Bytes::new(), fill, done: false };
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

/// A response body read as a file is, chunk by chunk, copied into the cache as it passes.
struct StreamRead {
    handle: Handle,
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, StorageError>>,
    chunk: bytes::Bytes,
    fill: Option<Filler>,
    done: bool,
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => {
                    if let Some(fill) = &mut self.fill {
                        fill.write(&chunk);
                    }
                    self.chunk = chunk;
                }
                Some(Err(e)) => {
                    self.fill = None;
                    return Err(std::io::Error::other(e));
                }
                None => {
                    self.done = true;
                    if let Some(fill) = self.fill.take() {
                        fill.commit();
                    }
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
