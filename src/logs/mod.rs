//! A job's logs: each container's output, line by line, to its host's log file, the
//! terminal (or any sink) and the metric recorder; and reading them back, live or not.
//! Each line is written with its time ([`crate::logs::index`]), so the API can serve it as a
//! CloudWatch event.

pub(crate) mod index;

use self::index as log_events;
use crate::docker::OutputStream;
use crate::metrics::Recorder;
use crate::state::record::now;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Receives each complete log line with the host that printed it.
pub type LogSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The longest line kept as one event: CloudWatch Logs' limit for an event (256 KiB). A
/// longer line is split into events of this size, as the CloudWatch agent does.
const MAX_LINE: usize = 256 << 10;

/// A line as CloudWatch Logs shows it (and SageMaker matches `MetricDefinitions` against):
/// every control character as `#` and its three octal digits, a tab as `#011`.
pub(crate) fn cloudwatch_form(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(|c| c.is_ascii_control()) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_ascii_control() {
            out.push_str(&format!("#{:03o}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Streams a container's output line by line to its log file and the sink, until it exits.
pub(crate) async fn follow(
    mut stream: OutputStream,
    host: String,
    path: PathBuf,
    sink: LogSink,
    recorder: Arc<Mutex<Recorder>>,
) {
    // Appended: a restarted job (spot replay) keeps the first attempt's lines.
    let mut file = match log_events::Writer::open(&path) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("cannot write {}: {e}", path.display());
            None
        }
    };
    // Docker frames are writes, not lines: keep a partial line per stream until it ends, and
    // how far it has been searched for a newline (a long line is searched once, not again
    // with every frame).
    let mut partial: [(Vec<u8>, usize); 2] = [(Vec::new(), 0), (Vec::new(), 0)];
    let emit = |file: &mut Option<log_events::Writer>, line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let at = now();
        if let Some(f) = file.as_mut()
            && let Err(e) = f.write((at * 1000.0) as i64, text)
        {
            tracing::warn!("cannot write {}: {e}", path.display());
            *file = None;
        }
        if let Ok(mut r) = recorder.lock() {
            r.observe(&host, text, at);
        }
        sink(&host, text);
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                let (buf, searched) = &mut partial[usize::from(chunk.stderr)];
                buf.extend_from_slice(&chunk.bytes);
                let mut start = 0;
                loop {
                    let from = start.max(*searched);
                    match buf[from..].iter().position(|b| *b == b'\n') {
                        Some(pos) if from + pos - start <= MAX_LINE => {
                            emit(&mut file, &buf[start..from + pos]);
                            start = from + pos + 1;
                        }
                        _ if buf.len() - start >= MAX_LINE => {
                            emit(&mut file, &buf[start..start + MAX_LINE]);
                            start += MAX_LINE;
                        }
                        _ => {
                            *searched = buf.len();
                            break;
                        }
                    }
                }
                buf.drain(..start);
                *searched -= start.min(*searched);
                // Each of Docker's frames is a burst of output: readers see it whole.
                flush(&mut file, &path);
            }
            Err(e) => {
                tracing::warn!("{e}");
                break;
            }
        }
    }
    // What a host printed last without a newline is a line too.
    for (buf, _) in partial {
        if !buf.is_empty() {
            emit(&mut file, &buf);
        }
    }
    flush(&mut file, &path);
}

fn flush(file: &mut Option<log_events::Writer>, path: &Path) {
    if let Some(f) = file.as_mut()
        && let Err(e) = f.flush()
    {
        tracing::warn!("cannot write {}: {e}", path.display());
        *file = None;
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
    // Lines already printed, per host.
    let mut printed: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        // Read `done` first: lines written before the job ended are read in this pass.
        let ended = done();
        for host in hosts(logs_dir).into_iter().filter(|h| only.is_none_or(|o| o == h)) {
            let Ok(reader) = log_events::Reader::open(&logs_dir.join(format!("{host}.log"))) else {
                continue;
            };
            let from = printed.entry(host.clone()).or_insert(0);
            match reader.events(*from, reader.len()) {
                Ok(events) => {
                    events.iter().for_each(|e| out(&host, &e.message));
                    *from = reader.len();
                }
                Err(e) => tracing::warn!("cannot read the log of {host}: {e}"),
            }
        }
        if !follow || ended {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How often `read --follow` looks for new lines.
const POLL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_show_as_cloudwatch_shows_them() {
        assert_eq!(cloudwatch_form("[0]#011train-rmse:0.5"), "[0]#011train-rmse:0.5");
        assert_eq!(cloudwatch_form("[0]\ttrain-rmse:0.5\r"), "[0]#011train-rmse:0.5#015");
        assert_eq!(cloudwatch_form("\u{1b}[31mred ü"), "#033[31mred ü");
    }
    use std::io::Write;

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
}
