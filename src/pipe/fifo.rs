//! The writing end of a channel's FIFO. Opened without blocking (a FIFO with no reader
//! refuses, ENXIO), so waiting for the algorithm to open it is given up when the job ends: a
//! reader that never opens holds nothing. Once open, writes block, as `cat`'s do: a
//! non-blocking writer is woken as soon as one page is free and moves a page a wake-up (a
//! seventh of `cat`'s speed, measured). A reader that stops reading holds its feed only as
//! long as its container lives: when it exits, the write fails with EPIPE.

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a FIFO nobody opened yet is tried again.
const OPEN_POLL: Duration = Duration::from_millis(5);

/// The pipe's buffer: a reader that has fallen behind finds this much waiting.
const PIPE_BUFFER: usize = 1 << 20;

/// How writing to the reader ended.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The reader closed its end (EPIPE): the epoch is over.
    Closed,
    /// The job ended.
    Cancelled,
    Io(std::io::Error),
}

/// Makes the FIFO at `path`, readable by any user the image runs as. One already there is
/// kept.
pub(crate) fn make(path: &Path) -> std::io::Result<()> {
    match rustix::fs::mknodat(rustix::fs::CWD, path, FileType::Fifo, Mode::from_raw_mode(0o644), 0) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The FIFO's writing end, once a reader has opened it; `None` when `cancel` came first.
pub(crate) fn open_when_read(path: &Path, cancel: &CancellationToken) -> std::io::Result<Option<Writer>> {
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        match rustix::fs::open(path, OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => {
                // A larger buffer means fewer wake-ups for both ends; refused, the default serves.
                let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_BUFFER);
                rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
                return Ok(Some(Writer { fd }));
            }
            Err(Errno::NXIO) => std::thread::sleep(OPEN_POLL),
            // The algorithm removed it: made again, as the reader will look for it there.
            Err(Errno::NOENT) => make(path)?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// An open FIFO being written.
pub(crate) struct Writer {
    fd: OwnedFd,
}

impl Writer {
    /// Writes all of `bytes`, blocking while the reader catches up; gives up between writes
    /// once the job has ended.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8], cancel: &CancellationToken) -> Result<(), WriteError> {
        while !bytes.is_empty() {
            if cancel.is_cancelled() {
                return Err(WriteError::Cancelled);
            }
            match rustix::io::write(&self.fd, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::INTR | Errno::AGAIN) => {}
                Err(Errno::PIPE) => return Err(WriteError::Closed),
                Err(e) => return Err(WriteError::Io(e.into())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_writer_waits_for_a_reader_and_an_early_close_is_epipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_0");
        make(&path).unwrap();
        make(&path).unwrap();
        let cancel = CancellationToken::new();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut f = std::fs::File::open(&path).unwrap();
                let mut head = [0u8; 4];
                f.read_exact(&mut head).unwrap();
                head
            })
        };
        let mut w = open_when_read(&path, &cancel).unwrap().unwrap();
        w.write_all(b"abcd", &cancel).unwrap();
        assert_eq!(&reader.join().unwrap(), b"abcd");
        // The reader has gone: writing more is EPIPE, not a hang or a signal.
        let big = vec![0u8; 4 << 20];
        assert!(matches!(w.write_all(&big, &cancel), Err(WriteError::Closed)));
    }

    #[test]
    fn a_fifo_nobody_opens_is_given_up_when_the_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_0");
        make(&path).unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            c.cancel();
        });
        assert!(open_when_read(&path, &cancel).unwrap().is_none());
    }
}
