//! Gzip on every core, as pigz does: the stream is cut into blocks compressed in parallel and
//! written in order, each block a gzip member (a multi-member file is plain gzip to `gzip`,
//! GNU tar and Python's `tarfile`). Blocks that do not compress (random weights, files that
//! are already compressed) are stored instead, which costs a memory copy rather than a
//! deflate pass. Memory stays bounded: at most two blocks per worker are in flight.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const BLOCK: usize = 1 << 20;
/// Compress-or-store is decided per segment, from a quick test compression of its start.
const SEGMENT: usize = 64 << 10;
const SAMPLE: usize = 4 << 10;
/// A sample that shrinks less than this is stored.
const WORTH_IT: f64 = 0.97;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

pub(crate) struct ParallelGzip<W: Write> {
    out: W,
    buffer: Vec<u8>,
    jobs: Option<Sender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    next_in: u64,
    next_out: u64,
    waiting: BTreeMap<u64, Vec<u8>>,
    max_in_flight: u64,
}

impl<W: Write> ParallelGzip<W> {
    pub(crate) fn new(out: W, level: Compression) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (jobs, queue) = channel::<Job>();
        let (done, results) = channel::<Done>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let (queue, done) = (queue.clone(), done.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        let Ok((seq, block)) = job else { return };
                        if done.send((seq, compress(&block, level))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParallelGzip {
            out,
            buffer: Vec::with_capacity(BLOCK),
            jobs: Some(jobs),
            results,
            workers,
            next_in: 0,
            next_out: 0,
            waiting: BTreeMap::new(),
            max_in_flight: 2 * threads as u64,
        }
    }

    fn dispatch(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buffer, Vec::with_capacity(BLOCK));
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("the compressor was finished"))?;
        jobs.send((self.next_in, block)).map_err(|_| io::Error::other("a compression thread stopped"))?;
        self.next_in += 1;
        // Write what is ready; wait when too much is in flight.
        while self.next_in - self.next_out > self.max_in_flight {
            self.receive_one()?;
        }
        while let Ok(done) = self.results.try_recv() {
            self.accept(done)?;
        }
        Ok(())
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let done = self.results.recv().map_err(|_| io::Error::other("a compression thread stopped"))?;
        self.accept(done)
    }

    fn accept(&mut self, (seq, block): Done) -> io::Result<()> {
        self.waiting.insert(seq, block?);
        while let Some(block) = self.waiting.remove(&self.next_out) {
            self.out.write_all(&block)?;
            self.next_out += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes everything in order and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.buffer.is_empty() || self.next_in == 0 {
            self.dispatch()?;
        }
        while self.next_out < self.next_in {
            self.receive_one()?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == BLOCK {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One block as gzip members: runs of segments that compress go into compressed members,
/// runs that do not (random weights, already-compressed files) into stored ones. A tar
/// stream mixes both within a block, so the choice is made per segment.
fn compress(block: &[u8], level: Compression) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() / 2 + 64);
    let mut start = 0;
    let mut run_worth: Option<bool> = None;
    let mut at = 0;
    while at < block.len() {
        let end = (at + SEGMENT).min(block.len());
        let worth = level.level() == 0 || worth_compressing(&block[at..end]);
        if run_worth.is_some_and(|w| w != worth) {
            member(&block[start..at], run_worth == Some(true), level, &mut out)?;
            start = at;
        }
        run_worth = Some(worth);
        at = end;
    }
    member(&block[start..], run_worth != Some(false), level, &mut out)?;
    Ok(out)
}

fn member(data: &[u8], compress: bool, level: Compression, out: &mut Vec<u8>) -> io::Result<()> {
    let level = if compress { level } else { Compression::none() };
    let mut gz = GzEncoder::new(std::mem::take(out), level);
    gz.write_all(data)?;
    *out = gz.finish()?;
    Ok(())
}

fn worth_compressing(segment: &[u8]) -> bool {
    let sample = &segment[..segment.len().min(SAMPLE)];
    if sample.len() < 512 {
        return true;
    }
    let mut probe = flate2::write::DeflateEncoder::new(Vec::with_capacity(sample.len()), Compression::fast());
    if probe.write_all(sample).is_err() {
        return true;
    }
    probe.finish().map(|c| (c.len() as f64) < WORTH_IT * sample.len() as f64).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Bytes no compressor can shrink (xorshift).
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn roundtrip(data: &[u8]) -> (Vec<u8>, usize) {
        let mut gz = ParallelGzip::new(Vec::new(), Compression::default());
        for chunk in data.chunks(100_003) {
            gz.write_all(chunk).unwrap();
        }
        let packed = gz.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&packed[..]).read_to_end(&mut back).unwrap();
        (back, packed.len())
    }

    #[test]
    fn several_blocks_come_back_in_order() {
        let text: Vec<u8> = (0..5_000_000u32)
            .flat_map(|i| format!("line {} of text\n", i % 977).into_bytes())
            .take(4_500_000)
            .collect();
        let (back, size) = roundtrip(&text);
        assert_eq!(back, text);
        assert!(size < text.len() / 5, "text must compress: {size} of {}", text.len());
    }

    #[test]
    fn random_blocks_are_stored_not_inflated() {
        let random = noise(3_000_000, 0x2545F4914F6CDD1D);
        let (back, size) = roundtrip(&random);
        assert_eq!(back, random);
        assert!(size < random.len() + random.len() / 500, "stored blocks add almost nothing: {size}");
    }

    #[test]
    fn a_block_mixing_random_and_text_compresses_its_text() {
        let mut data = noise(600_000, 0x9E3779B97F4A7C15);
        data.extend((0..40_000).flat_map(|i| format!("row {} {}\n", i % 50, i % 3).into_bytes()));
        let text_len = data.len() - 600_000;
        let (back, size) = roundtrip(&data);
        assert_eq!(back, data);
        assert!(size < 600_000 + text_len / 5, "the text after the random part must still be compressed: {size}");
    }

    #[test]
    fn empty_input_is_a_valid_gzip_file() {
        let (back, size) = roundtrip(b"");
        assert!(back.is_empty() && size > 0);
    }
}
