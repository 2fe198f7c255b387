//! A job's logs: each container's output, line by line, to its host's log file, the
//! terminal (or any sink) and the metric recorder; and reading them back, live or not.
//!
//! Beside each `<host>.log` (plain lines, for people and `tail`) a `<host>.times` file holds
//! the millisecond each line was printed, one per line in the same order, so the API can
//! serve the lines as CloudWatch events with their own timestamps.

use crate::docker::Docker;
use crate::metrics::Recorder;
use crate::record::now;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Receives each complete log line with the host that printed it.
pub type LogSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Streams a container's output line by line to its log file and the sink, until it exits.
pub async fn follow(
    docker: Docker,
    id: String,
    host: String,
    path: PathBuf,
    sink: LogSink,
    recorder: Arc<Mutex<Recorder>>,
) {
    // Appended: a restarted job (spot replay) keeps the first attempt's lines.
    let append = |path: &Path| match std::fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("cannot write {}: {e}", path.display());
            None
        }
    };
    let mut times = append(&path.with_extension("times"));
    let mut file = append(&path);
    // Docker frames are writes, not lines: keep a partial line per stream until it ends.
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut emit = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let at = now();
        // The time goes first: a reader that sees the line can always find its time.
        if let Some(f) = times.as_mut() {
            let _ = writeln!(f, "{}", (at * 1000.0) as i64);
        }
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{text}");
        }
        if let Ok(mut r) = recorder.lock() {
            r.observe(&host, text, at);
        }
        sink(&host, text);
    };
    let mut stream = Box::pin(docker.output(&id));
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                let buf = &mut partial[usize::from(chunk.stderr)];
                buf.extend_from_slice(&chunk.bytes);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    emit(&line[..line.len() - 1]);
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                break;
            }
        }
    }
    for buf in partial {
        if !buf.is_empty() {
            emit(&buf);
        }
    }
}

/// The hosts that have a log in `logs_dir`, sorted (`algo-2` before `algo-10`).
pub fn hosts(logs_dir: &Path) -> Vec<String> {
    let mut hosts: Vec<String> = std::fs::read_dir(logs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".log")).map(str::to_string))
        .collect();
    hosts.sort_by_key(|h| (h.len(), h.clone()));
    hosts
}

/// Prints a job's log lines through `out`, host by host; with `follow`, keeps reading new
/// lines (from any host, as they are written) until `done()` says the job has ended.
pub async fn read(
    logs_dir: &Path,
    only: Option<&str>,
    follow: bool,
    done: impl Fn() -> bool,
    mut out: impl FnMut(&str, &str),
) {
    let mut offsets: BTreeMap<String, u64> = BTreeMap::new();
    let mut partial: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    loop {
        // Read `done` first: lines written before the job ended are read in this pass.
        let ended = done();
        for host in hosts(logs_dir).into_iter().filter(|h| only.is_none_or(|o| o == h)) {
            let offset = offsets.entry(host.clone()).or_insert(0);
            let Ok(mut file) = std::fs::File::open(logs_dir.join(format!("{host}.log"))) else {
                continue;
            };
            if file.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut bytes = Vec::new();
            if let Ok(n) = file.read_to_end(&mut bytes) {
                *offset += n as u64;
            }
            let buf = partial.entry(host.clone()).or_default();
            buf.extend_from_slice(&bytes);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                out(&host, &String::from_utf8_lossy(&line[..line.len() - 1]));
            }
        }
        if !follow || ended {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One log line as CloudWatch Logs serves it: when it was printed (ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub timestamp: i64,
    pub message: String,
}

/// Every complete line of `host`'s log with its time. Lines from before times were kept
/// take the time of the next line that has one, or the file's modification time.
pub fn events(logs_dir: &Path, host: &str) -> std::io::Result<Vec<Event>> {
    let text = std::fs::read(logs_dir.join(format!("{host}.log")))?;
    let modified = std::fs::metadata(logs_dir.join(format!("{host}.log")))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let times: Vec<i64> = std::fs::read_to_string(logs_dir.join(format!("{host}.times")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(text[..complete]
        .split(|b| *b == b'\n')
        .take(text[..complete].iter().filter(|b| **b == b'\n').count())
        .enumerate()
        .map(|(i, line)| Event {
            timestamp: times.get(i).copied().unwrap_or(modified),
            message: String::from_utf8_lossy(line).into_owned(),
        })
        .collect())
}

/// How often `read --follow` looks for new lines.
const POLL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_follows_new_lines_until_the_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().to_path_buf();
        std::fs::write(logs.join("algo-1.log"), "one\n").unwrap();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (logs, ended) = (logs.clone(), ended.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut f = std::fs::OpenOptions::new().append(true).open(logs.join("algo-1.log")).unwrap();
                writeln!(f, "two").unwrap();
                std::fs::write(logs.join("algo-2.log"), "other host\n").unwrap();
                ended.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut seen = Vec::new();
        read(
            &logs,
            None,
            true,
            || ended.load(std::sync::atomic::Ordering::SeqCst),
            |h, l| seen.push(format!("{h} {l}")),
        )
        .await;
        writer.await.unwrap();
        assert_eq!(seen, ["algo-1 one", "algo-1 two", "algo-2 other host"]);
        let mut only = Vec::new();
        read(&logs, Some("algo-2"), false, || true, |_, l| only.push(l.to_string())).await;
        assert_eq!(only, ["other host"]);
    }

    #[test]
    fn events_pair_each_complete_line_with_its_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("algo-1.log"), "first\nsecond\npartial").unwrap();
        std::fs::write(dir.path().join("algo-1.times"), "1000\n2000\n3000\n").unwrap();
        let events = events(dir.path(), "algo-1").unwrap();
        assert_eq!(
            events,
            [Event { timestamp: 1000, message: "first".into() }, Event { timestamp: 2000, message: "second".into() }]
        );
        assert!(super::events(dir.path(), "algo-2").is_err());
    }
}
