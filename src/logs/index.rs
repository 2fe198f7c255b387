//! A host's log as CloudWatch Logs serves it: events with their own millisecond timestamps,
//! read by position without reading the whole log. Beside each `<host>.log` (plain lines,
//! for people and `tail`) an `<host>.index` holds one 16-byte record per line: the time it
//! was printed (ms since the epoch, little-endian i64) and where the line starts in the log
//! (u64). Times never go backwards within a log, so a time range is a range of lines, found
//! by binary search; a page of events is one read of the log.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const RECORD: u64 = 16;

/// One log line with the time it was printed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub timestamp: i64,
    pub message: String,
}

/// Appends lines to a host's log and their records to its index, buffered: a burst of lines
/// costs two writes, not two per line. [`Writer::flush`] makes them visible to readers.
pub(crate) struct Writer {
    // Declared (and so dropped, flushing) index first: a reader skips a record whose line
    // is not complete yet, but never sees a line without its record.
    index: std::io::BufWriter<File>,
    log: std::io::BufWriter<File>,
    offset: u64,
    last: i64,
}

impl Writer {
    /// Opens (appending: a restarted job keeps the first attempt's lines) `path` and its index.
    pub(crate) fn open(path: &Path) -> std::io::Result<Writer> {
        let append = |p: PathBuf| std::fs::OpenOptions::new().create(true).read(true).append(true).open(p);
        let log = append(path.to_path_buf())?;
        let index = append(index_path(path))?;
        let offset = log.metadata()?.len();
        let records = index.metadata()?.len() / RECORD;
        let last = match records {
            0 => i64::MIN,
            n => read_record(&index, n - 1)?.0,
        };
        Ok(Writer { index: std::io::BufWriter::new(index), log: std::io::BufWriter::new(log), offset, last })
    }

    /// Writes out what is buffered, the records before the lines.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.index.flush()?;
        self.log.flush()
    }

    /// Writes one line printed at `ms` (buffered until [`Writer::flush`]).
    pub(crate) fn write(&mut self, ms: i64, line: &str) -> std::io::Result<()> {
        // A clock stepping back must not break the order binary search relies on.
        let ms = ms.max(self.last);
        self.last = ms;
        let mut record = [0u8; RECORD as usize];
        record[..8].copy_from_slice(&ms.to_le_bytes());
        record[8..].copy_from_slice(&self.offset.to_le_bytes());
        self.index.write_all(&record)?;
        self.log.write_all(line.as_bytes())?;
        self.log.write_all(b"\n")?;
        self.offset += line.len() as u64 + 1;
        Ok(())
    }
}

fn index_path(log: &Path) -> PathBuf {
    log.with_extension("index")
}

fn read_record(index: &File, i: u64) -> std::io::Result<(i64, u64)> {
    let mut record = [0u8; RECORD as usize];
    index.read_exact_at(&mut record, i * RECORD)?;
    let (ms, offset) = record.split_at(8);
    let ms = i64::from_le_bytes(ms.try_into().unwrap_or_default());
    let offset = u64::from_le_bytes(offset.try_into().unwrap_or_default());
    Ok((ms, offset))
}

/// A host's log opened for reading: its complete lines, by number, as they were when opened.
pub(crate) struct Reader {
    log: File,
    records: Records,
    /// Records at opening; lines at the end may still lack their text.
    count: u64,
    lines: u64,
    log_len: u64,
}

/// Where the line records come from.
enum Records {
    Index(File),
    /// Logs written before indexes existed: every line at the log's modification time.
    Scanned(Vec<(i64, u64)>),
}

impl Reader {
    pub(crate) fn open(path: &Path) -> std::io::Result<Reader> {
        let log = File::open(path)?;
        // The log's length first: records written after it point past it and are left out.
        let log_len = log.metadata()?.len();
        let (records, count) = match File::open(index_path(path)) {
            Ok(index) => {
                let count = index.metadata()?.len() / RECORD;
                (Records::Index(index), count)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let scanned = scan(&log, log_len)?;
                let count = scanned.len() as u64;
                (Records::Scanned(scanned), count)
            }
            Err(e) => return Err(e),
        };
        let mut reader = Reader { log, records, count, lines: count, log_len };
        // A line whose record is written but whose text is not (yet) complete is not a line.
        while reader.lines > 0 && !reader.complete(reader.lines - 1)? {
            reader.lines -= 1;
        }
        Ok(reader)
    }

    /// How many complete lines the log holds.
    pub(crate) fn len(&self) -> u64 {
        self.lines
    }

    fn record(&self, i: u64) -> std::io::Result<(i64, u64)> {
        match &self.records {
            Records::Index(index) => read_record(index, i),
            Records::Scanned(records) => Ok(records.get(i as usize).copied().unwrap_or_default()),
        }
    }

    fn complete(&self, i: u64) -> std::io::Result<bool> {
        let (_, start) = self.record(i)?;
        let end = self.end_of(i)?;
        if start >= self.log_len || end <= start {
            return Ok(false);
        }
        let mut last = [0u8; 1];
        self.log.read_exact_at(&mut last, end - 1)?;
        Ok(last[0] == b'\n')
    }

    /// Where line `i` ends (after its newline).
    fn end_of(&self, i: u64) -> std::io::Result<u64> {
        if i + 1 < self.count { Ok(self.record(i + 1)?.1.min(self.log_len)) } else { Ok(self.log_len) }
    }

    pub(crate) fn timestamp(&self, i: u64) -> std::io::Result<i64> {
        Ok(self.record(i)?.0)
    }

    /// The first line printed at or after `ms` (or `len()` if none).
    pub(crate) fn first_at_or_after(&self, ms: i64) -> std::io::Result<u64> {
        let (mut lo, mut hi) = (0, self.lines);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.timestamp(mid)? < ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Lines `from..to` as events, in one read of the log.
    pub(crate) fn events(&self, from: u64, to: u64) -> std::io::Result<Vec<Event>> {
        let to = to.min(self.lines);
        if from >= to {
            return Ok(Vec::new());
        }
        let start = self.record(from)?.1;
        let end = self.end_of(to - 1)?;
        let mut bytes = vec![0u8; (end - start) as usize];
        self.log.read_exact_at(&mut bytes, start)?;
        let mut events = Vec::with_capacity((to - from) as usize);
        for (i, line) in (from..to).zip(bytes.split(|b| *b == b'\n')) {
            events.push(Event { timestamp: self.timestamp(i)?, message: String::from_utf8_lossy(line).into_owned() });
        }
        Ok(events)
    }
}

/// Line starts of a log without an index, all at its modification time.
fn scan(log: &File, len: u64) -> std::io::Result<Vec<(i64, u64)>> {
    let modified = log
        .metadata()?
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let mut bytes = vec![0u8; len as usize];
    log.read_exact_at(&mut bytes, 0)?;
    let mut starts = vec![(modified, 0)];
    starts.extend(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| (modified, i as u64 + 1)));
    // The position after the last newline starts no line.
    if starts.last().is_some_and(|(_, s)| *s >= len) {
        starts.pop();
    }
    Ok(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_by_time_and_read_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("algo-1.log");
        let mut w = Writer::open(&path).unwrap();
        for (ms, line) in [(1000, "a"), (1000, "bb"), (2000, ""), (1500, "late clock"), (3000, "ünïcode")] {
            w.write(ms, line).unwrap();
        }
        let r = Reader::open(&path).unwrap();
        assert_eq!(r.len(), 0, "nothing is visible before the flush");
        w.flush().unwrap();
        let r = Reader::open(&path).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r.first_at_or_after(1001).unwrap(), 2);
        assert_eq!(r.first_at_or_after(0).unwrap(), 0);
        assert_eq!(r.first_at_or_after(9999).unwrap(), 5);
        let events = r.events(1, 5).unwrap();
        let got: Vec<(i64, &str)> = events.iter().map(|e| (e.timestamp, e.message.as_str())).collect();
        // The clock that stepped back keeps the previous time.
        assert_eq!(got, [(1000, "bb"), (2000, ""), (2000, "late clock"), (3000, "ünïcode")]);
        // Reopened, the writer appends after what is there.
        drop(w);
        Writer::open(&path).unwrap().write(4000, "again").unwrap();
        assert_eq!(Reader::open(&path).unwrap().events(5, 6).unwrap()[0].message, "again");
    }

    #[test]
    fn a_line_still_being_written_is_not_read_and_old_logs_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("algo-1.log");
        Writer::open(&path).unwrap().write(1, "done").unwrap();
        // A record whose line has not arrived yet, and a half-written line.
        let mut index = std::fs::OpenOptions::new().append(true).open(index_path(&path)).unwrap();
        index.write_all(&[2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"part").unwrap();
        let r = Reader::open(&path).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r.events(0, 9).unwrap()[0].message, "done");

        let old = dir.path().join("algo-2.log");
        std::fs::write(&old, "one\ntwo\npartial").unwrap();
        let r = Reader::open(&old).unwrap();
        let lines: Vec<String> = r.events(0, r.len()).unwrap().into_iter().map(|e| e.message).collect();
        assert_eq!(lines, ["one", "two"]);
        assert!(Reader::open(&dir.path().join("algo-3.log")).is_err());
    }
}
