//! Pipe mode (DESIGN §13): each Pipe channel of a host is a FIFO per epoch,
//! `/opt/ml/input/data/<channel>_<epoch>`, written by a feed of smlocal's while the algorithm
//! reads it. `_0` exists before the container starts; `_N+1` is made the moment `_N` is
//! opened (never all epochs up front: the algorithm decides how many there are). An epoch is
//! the host's share of the channel in the epoch's order ([`order`]), each object's bytes (or
//! each augmented manifest attribute's, [`manifest`]) in turn, decompressed when the channel
//! is `Gzip` and framed when it is `RecordIO` ([`recordio`]); closing the FIFO is the
//! epoch's end of file. A reader that closes early (EPIPE) ends its epoch. Each feed runs on
//! a thread of its own, so a slow reader holds nothing else up; bytes come from the cache or
//! straight from storage ([`source`]), a buffer at a time.

mod fifo;
pub(crate) mod manifest;
mod order;
pub(crate) mod recordio;
mod source;

use self::source::Sources;
use crate::cache::Cache;
use crate::spec::RecordWrapper;
use crate::storage::{ObjectInfo, Storage, StorageError};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What a channel sends, in its base order (see [`order`]).
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// An object of an `S3Prefix` or `ManifestFile` channel; its size and version when the
    /// listing gave them (then it may be read from the cache).
    Object { uri: String, info: Option<ObjectInfo> },
    /// A line of an augmented manifest.
    Line(manifest::Line),
}

/// One run of bytes of an epoch: a record, when the channel is RecordIO.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Object { uri: String, info: Option<ObjectInfo> },
    Text(Vec<u8>),
}

impl Item {
    /// Its size when the listing gave one (an augmented manifest's line: none).
    pub(crate) fn known_size(&self) -> u64 {
        match self {
            Item::Object { info: Some(info), .. } => info.size,
            _ => 0,
        }
    }

    fn pieces(&self, out: &mut Vec<Piece>) {
        match self {
            Item::Object { uri, info } => out.push(Piece::Object { uri: uri.clone(), info: info.clone() }),
            Item::Line(line) => out.extend(line.attributes.iter().map(|a| match a {
                manifest::Attribute::Ref(uri) => Piece::Object { uri: uri.clone(), info: None },
                manifest::Attribute::Text(bytes) => Piece::Text(bytes.clone()),
            })),
        }
    }
}

/// One host's feed of one Pipe channel, as staging planned it.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    pub(crate) host: String,
    pub(crate) channel: String,
    /// The host's `/opt/ml/input/data` on this machine, where the FIFOs are.
    pub(crate) folder: PathBuf,
    pub(crate) items: Arc<Vec<Item>>,
    /// The hosts the channel serves, and this one's place among them.
    pub(crate) hosts: usize,
    pub(crate) index: usize,
    pub(crate) sharded: bool,
    pub(crate) seed: Option<i64>,
    pub(crate) record_wrapper: RecordWrapper,
    pub(crate) gzip: bool,
    /// Whether objects streamed from storage are kept in the cache: not when the channel is
    /// larger than the cache (Pipe mode exists for data larger than the disk).
    pub(crate) fill_cache: bool,
}

impl Feed {
    /// The FIFO of `epoch`.
    pub(crate) fn fifo(&self, epoch: u64) -> PathBuf {
        self.folder.join(format!("{}_{epoch}", self.channel))
    }

    /// Makes `_0`, before the container starts.
    pub(crate) fn prepare(&self) -> std::io::Result<()> {
        fifo::make(&self.fifo(0))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    #[error("cannot read {uri}: {source}")]
    Source {
        uri: String,
        #[source]
        source: StorageError,
    },
    #[error("cannot read {uri}: {source}")]
    Read {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hold a decompressed object for its RecordIO header: {source}")]
    Spill {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the FIFO {}: {source}", path.display())]
    Fifo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long the end of a job waits for its feeds to stop.
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What one epoch of one feed delivered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EpochReport {
    pub epoch: u64,
    /// Bytes written into the FIFO (framing included).
    pub bytes: u64,
    /// Items (objects or manifest lines) sent whole.
    pub items: usize,
    /// Whether the reader took the epoch to its end; false when it closed early or the job
    /// ended first.
    pub whole: bool,
}

/// What one feed delivered, epoch by epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PipeReport {
    pub host: String,
    pub channel: String,
    /// The epochs whose FIFO the algorithm opened.
    pub epochs: Vec<EpochReport>,
}

/// The running feeds of an attempt.
pub(crate) struct Feeds {
    cancel: CancellationToken,
    failed: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
    reports: Vec<Arc<Mutex<PipeReport>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Feeds {
    /// Starts a thread per feed; each waits for its FIFO to be opened.
    pub(crate) fn start(feeds: Vec<Feed>, storage: &Storage, cache: &Cache) -> Feeds {
        let (cancel, failed) = (CancellationToken::new(), CancellationToken::new());
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let mut reports = Vec::new();
        let mut threads = Vec::new();
        let handle = tokio::runtime::Handle::current();
        let span = tracing::Span::current();
        for feed in feeds {
            let report = Arc::new(Mutex::new(PipeReport {
                host: feed.host.clone(),
                channel: feed.channel.clone(),
                epochs: Vec::new(),
            }));
            reports.push(report.clone());
            let sources = Sources::new(handle.clone(), storage.clone(), cache.clone(), feed.fill_cache, feed.gzip);
            let (t_cancel, t_failed, t_failure, span) = (cancel.clone(), failed.clone(), failure.clone(), span.clone());
            let cache = cache.clone();
            let name = format!("pipe-{}-{}", feed.host, feed.channel);
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let _entered = span.enter();
                let result = run(&feed, sources, &report, &t_cancel);
                cache.trim();
                if let Err(e) = result {
                    let reason = format!("ClientError: channel '{}' on {}: {e}", feed.channel, feed.host);
                    tracing::warn!("{reason}");
                    if let Ok(mut f) = t_failure.lock() {
                        f.get_or_insert(reason);
                    }
                    t_failed.cancel();
                }
            });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(format!("InternalServerError: cannot start a Pipe mode feed: {e}"));
                    }
                    failed.cancel();
                }
            }
        }
        Feeds { cancel, failed, failure, reports, threads }
    }

    /// Cancelled when a feed failed (its object could not be read): the job fails with it.
    pub(crate) fn failed(&self) -> &CancellationToken {
        &self.failed
    }

    /// The first feed failure's reason.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Ends every feed (a reader still waiting is left with no writer) and reports them.
    /// Called once the containers have exited, when no write can block; a feed that has not
    /// ended within [`FINISH_WAIT`] all the same (a FIFO held open by something else) is
    /// left to end on its own rather than hold the job.
    pub(crate) async fn finish(mut self) -> Vec<PipeReport> {
        self.cancel.cancel();
        let threads = std::mem::take(&mut self.threads);
        let deadline = tokio::time::Instant::now() + FINISH_WAIT;
        for t in threads {
            while !t.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if !t.is_finished() {
                tracing::warn!("a Pipe mode feed is still writing after its job ended; it is left to end alone");
            }
        }
        self.reports.iter().filter_map(|r| r.lock().ok().map(|r| r.clone())).collect()
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// How writing an epoch ended, short of an error.
enum Written {
    Whole,
    ClosedEarly,
    Cancelled,
}

/// Epoch after epoch, until the job ends.
fn run(
    feed: &Feed,
    mut sources: Sources,
    report: &Mutex<PipeReport>,
    cancel: &CancellationToken,
) -> Result<(), FeedError> {
    let fifo_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| FeedError::Fifo { path, source }
    };
    for epoch in 0.. {
        let path = feed.fifo(epoch);
        fifo::make(&path).map_err(fifo_err(&path))?;
        let Some(mut writer) = fifo::open_when_read(&path, cancel).map_err(fifo_err(&path))? else {
            return Ok(());
        };
        let next = feed.fifo(epoch + 1);
        fifo::make(&next).map_err(fifo_err(&next))?;
        let share = order::epoch_share(feed.items.len(), feed.hosts, feed.index, feed.sharded, feed.seed, epoch);
        let mut pieces = Vec::new();
        let mut ends = Vec::with_capacity(share.len());
        for i in share {
            feed.items[i].pieces(&mut pieces);
            ends.push(pieces.len());
        }
        let mut epoch_report = EpochReport { epoch, bytes: 0, items: 0, whole: false };
        let written = write_epoch(feed, &mut sources, &pieces, &ends, &mut writer, cancel, &mut epoch_report);
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                push(report, epoch_report);
                return Err(e);
            }
        };
        epoch_report.whole = matches!(written, Written::Whole);
        tracing::info!(
            "Pipe mode: {} on {}: epoch {epoch}: {} item(s), {} byte(s){}",
            feed.channel,
            feed.host,
            epoch_report.items,
            epoch_report.bytes,
            match written {
                Written::Whole => ", read to the end",
                Written::ClosedEarly => ", closed early by the algorithm",
                Written::Cancelled => ", cut short: the job ended",
            }
        );
        push(report, epoch_report);
        if matches!(written, Written::Cancelled) {
            return Ok(());
        }
        // Dropping the writer closes the FIFO: the reader's end of file.
        drop(writer);
    }
    Ok(())
}

fn push(report: &Mutex<PipeReport>, epoch: EpochReport) {
    if let Ok(mut r) = report.lock() {
        r.epochs.push(epoch);
    }
}

/// Writes one epoch's pieces; `ends[k]` is where item k's pieces end.
fn write_epoch(
    feed: &Feed,
    sources: &mut Sources,
    pieces: &[Piece],
    ends: &[usize],
    writer: &mut fifo::Writer,
    cancel: &CancellationToken,
    report: &mut EpochReport,
) -> Result<Written, FeedError> {
    let fifo_path = feed.fifo(report.epoch);
    let mut buffer = vec![0u8; 1 << 20];
    let mut item_end = ends.iter().peekable();
    for (at, piece) in pieces.iter().enumerate() {
        let uri = match piece {
            Piece::Object { uri, .. } => uri.as_str(),
            Piece::Text(_) => "an augmented manifest attribute",
        };
        let opening = sources.open(pieces, at)?;
        let mut put = |bytes: &[u8], report: &mut EpochReport| -> Result<Option<Written>, FeedError> {
            match writer.write_all(bytes, cancel) {
                Ok(()) => {
                    report.bytes += bytes.len() as u64;
                    Ok(None)
                }
                Err(fifo::WriteError::Closed) => Ok(Some(Written::ClosedEarly)),
                Err(fifo::WriteError::Cancelled) => Ok(Some(Written::Cancelled)),
                Err(fifo::WriteError::Io(source)) => Err(FeedError::Fifo { path: fifo_path.clone(), source }),
            }
        };
        let copied = match feed.record_wrapper {
            RecordWrapper::None => copy(opening.reader, opening.size, uri, &mut buffer, &mut |b| put(b, report))?,
            RecordWrapper::RecordIO => {
                let (reader, size) = Sources::sized(opening, uri)?;
                let mut reader = reader.take(size);
                let mut ended = None;
                for (flag, length) in recordio::parts(size) {
                    let header = recordio::header(flag, length);
                    if let Some(w) = put(&header, report)? {
                        ended = Some(w);
                        break;
                    }
                    let part = (&mut reader).take(length as u64);
                    if let Some(w) = copy(part, Some(length as u64), uri, &mut buffer, &mut |b| put(b, report))? {
                        ended = Some(w);
                        break;
                    }
                    if let Some(w) = put(recordio::padding(length as u64), report)? {
                        ended = Some(w);
                        break;
                    }
                }
                ended
            }
        };
        if let Some(w) = copied {
            return Ok(w);
        }
        while item_end.peek().is_some_and(|end| **end == at + 1) {
            item_end.next();
            report.items += 1;
        }
    }
    Ok(Written::Whole)
}

/// Writes bytes into the FIFO; `Some` when the epoch ended before they all went in.
type Put<'a> = dyn FnMut(&[u8]) -> Result<Option<Written>, FeedError> + 'a;

/// Copies `reader` out through `put`, a buffer at a time; with `expect`, exactly that many
/// bytes must come (an object shorter than its listing is an error, not a short record).
fn copy(
    mut reader: impl Read,
    expect: Option<u64>,
    uri: &str,
    buffer: &mut [u8],
    put: &mut Put<'_>,
) -> Result<Option<Written>, FeedError> {
    let mut total = 0u64;
    loop {
        let n = match reader.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(FeedError::Read { uri: uri.to_string(), source }),
        };
        total += n as u64;
        if let Some(w) = put(&buffer[..n])? {
            return Ok(Some(w));
        }
    }
    if let Some(expected) = expect
        && total != expected
    {
        return Err(FeedError::Source {
            uri: uri.to_string(),
            source: StorageError::Incomplete { uri: uri.to_string(), expected, got: total },
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn feed(dir: &std::path::Path, objects: &[(&str, &[u8])], record_wrapper: RecordWrapper) -> Feed {
        let data = dir.join("objects");
        std::fs::create_dir_all(&data).unwrap();
        let items = objects
            .iter()
            .map(|(name, bytes)| {
                std::fs::write(data.join(name), bytes).unwrap();
                Item::Object { uri: format!("file://{}/{name}", data.display()), info: None }
            })
            .collect();
        let folder = dir.join("input/data");
        std::fs::create_dir_all(&folder).unwrap();
        Feed {
            host: "algo-1".into(),
            channel: "train".into(),
            folder,
            items: Arc::new(items),
            hosts: 1,
            index: 0,
            sharded: false,
            seed: None,
            record_wrapper,
            gzip: false,
            fill_cache: true,
        }
    }

    fn read_all(path: PathBuf) -> Vec<u8> {
        let mut out = Vec::new();
        std::fs::File::open(path).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn epochs_are_made_one_at_a_time_and_an_early_close_ends_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than the FIFO's buffer, so the early close finds the writer still writing.
        let big = [b"alpha;".as_slice(), &vec![b'.'; 4 << 20]].concat();
        let feed = feed(dir.path(), &[("a", &big), ("b", b"bravo;")], RecordWrapper::None);
        feed.prepare().unwrap();
        assert!(feed.fifo(0).exists() && !feed.fifo(1).exists());
        let storage = Storage::new(Default::default());
        let feeds = Feeds::start(vec![feed.clone()], &storage, &Cache::new(&dir.path().join("cache")));
        let reader = tokio::task::spawn_blocking(move || {
            let first = read_all(feed.fifo(0));
            let (one, two) = (feed.fifo(1).exists(), feed.fifo(2).exists());
            let mut early = std::fs::File::open(feed.fifo(1)).unwrap();
            let mut three = [0u8; 3];
            early.read_exact(&mut three).unwrap();
            drop(early);
            let third = read_all(feed.fifo(2));
            (first, one, two, three, third)
        });
        let (first, one, two, three, third) = reader.await.unwrap();
        let whole_epoch = [big.as_slice(), b"bravo;"].concat();
        assert!(first == whole_epoch, "epoch 0 is every object, in order");
        assert!(one && !two, "_1 is made when _0 is opened, _2 not yet");
        assert_eq!(&three, b"alp");
        assert!(third == whole_epoch, "epoch 2 is whole again");
        assert!(feeds.failure().is_none());
        let reports = feeds.finish().await;
        let whole: Vec<bool> = reports[0].epochs.iter().map(|e| e.whole).collect();
        assert_eq!(whole, [true, false, true]);
        assert_eq!(reports[0].epochs[0].items, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_object_fails_the_feed_with_its_uri() {
        let dir = tempfile::tempdir().unwrap();
        let mut feed = feed(dir.path(), &[("a", b"x")], RecordWrapper::RecordIO);
        let gone = format!("file://{}/objects/gone", dir.path().display());
        feed.items = Arc::new(vec![Item::Object { uri: gone.clone(), info: None }]);
        feed.prepare().unwrap();
        let feeds = Feeds::start(vec![feed.clone()], &Storage::new(Default::default()), &Cache::new(dir.path()));
        let got = tokio::task::spawn_blocking(move || read_all(feed.fifo(0))).await.unwrap();
        assert!(got.is_empty());
        tokio::time::timeout(std::time::Duration::from_secs(5), feeds.failed().cancelled()).await.unwrap();
        let reason = feeds.failure().unwrap();
        assert!(
            reason.starts_with("ClientError: channel 'train' on algo-1: cannot read ") && reason.contains(&gone),
            "{reason}"
        );
    }
}
