//! A scriptable container for testing the training contract: its arguments are a list of
//! steps run in order, so a test can make a container that behaves exactly as it needs
//! (`ContainerEntrypoint: ["/usr/local/bin/probe", "write", "/opt/ml/model/a", "x", "exit", "3"]`).
//!
//! Steps:
//!   echo TEXT            print TEXT on stdout          stderr TEXT   print on stderr
//!   write PATH TEXT      write a file (parents made)   symlink TARGET LINK
//!   append PATH TEXT     append to a file
//!   copy SRC DST         copy a file or a tree         cat PATH      print a file
//!   env                  print the environment, sorted, as NAME=VALUE lines
//!   args                 print the process's own arguments as a JSON array
//!   sleep SECS           sleep (wakes early on SIGTERM when `on-term` is set)
//!   on-term CODE         from now on, SIGTERM prints "probe: SIGTERM", writes
//!                        /opt/ml/output/data/sigterm and exits with CODE
//!   alloc MB             allocate and touch MB mebibytes, and keep them
//!   exit CODE            exit now
//!   train                nothing (what SageMaker passes to the image's own entrypoint)
//!   resolve NAME         print "resolved NAME" once NAME resolves (retries up to 10 s)
//!   listen PORT          accept one TCP connection and print "probe: got LINE"
//!   send HOST PORT TEXT  connect (retrying up to 10 s) and send one line
//!   may-fail             later steps that fail print "probe: step failed" and go on
//!   only HOST            the following steps run on HOST only ...
//!   only-if-exists PATH  the following steps run only if PATH exists ...
//!   only-if-missing PATH ... or only if it does not ...
//!   only-if-hosts N      ... or only if the job has N hosts ...
//!   only-if-unreachable HOST PORT  ... or (narrowing) only if HOST:PORT does not answer ...
//!   listen-forever PORT  accept TCP connections on PORT and close them, until killed
//!   all                  ... until this step, after which every host runs them again
//!   rm PATH              delete a file
//!   rmtree PATH          delete a folder and everything in it
//!   mkfifo PATH          make a FIFO (a named pipe)
//!   mknod PATH           make a character device node (what /dev/null is)
//!   threads N            start up to N sleeping threads; print how many started
//!   spew N               print lines "1" to "N" on stdout as fast as it can
//!   print TEXT           print TEXT on stdout with no newline
//!   longline N           print one line of N 'x' characters (and a newline)
//!   alloc-share F        allocate F (0..1) of the container's memory limit, and keep it
//!   hostname-in-hosts    fail (as an algorithm that trusts /etc/hostname would) unless the
//!                        host name is one of resourceconfig.json's hosts
//!   pipe CHANNEL N DIR   read N epochs (or A..B: epochs A to B-1) of a Pipe mode channel (/opt/ml/input/data/CHANNEL_0,
//!                        _1, ...; each waited for up to 10 s, as SageMaker's readers
//!                        retry) to their end, each into DIR/CHANNEL_E (zeros as holes), and
//!                        print "pipe CHANNEL_E bytes=B"
//!   pipe-time CHANNEL N  read N epochs, printing for each its bytes, the milliseconds from
//!                        opening the FIFO to its first byte, and the seconds from the first
//!                        byte to the end (the benchmark's reader)
//!   pipe-head CHANNEL E B  open CHANNEL_E, read B bytes, close it early; print what it did
//!   pipe-pause CHANNEL E S open CHANNEL_E, read a byte, pause S seconds, read the rest; print its size
//!   exists PATH          print "exists PATH=true" or "=false"
//!   curve HP:N:MS        a training curve that a hyperparameter sets: for epoch 1..N print
//!                        "epoch=E<tab>loss=L" with L = X·(1 + 1/E), X the float hyperparameter
//!                        HP, pausing MS milliseconds after each line (what tuning tests
//!                        rank and stop early)
//!   serve                the inference side (what SageMaker passes to a hosting image):
//!                        port 8080, behaving as the environment says (see `serve` below)
//! Started as `probe -c "STEP ARG ..."` (a shell-form ENTRYPOINT), the steps are one string.
//! Started as `probe train` (SageMaker's own start, as a tuning job's training jobs are), the
//! steps are `$PROBE_STEPS`, split at white space.
//! `{host}` in any argument becomes the current host from resourceconfig.json.
//! Without `on-term`, SIGTERM is ignored, as it is for any PID 1 with no handler.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    if src.is_dir() {
        fs::create_dir_all(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(src, dst).map(|_| ())
    }
}

/// How many arguments each step takes, so steps for other hosts can be skipped.
fn arity(step: &str) -> usize {
    match step {
        "write" | "append" | "symlink" | "copy" | "sparse" => 2,
        "send" | "pipe" | "pipe-head" | "pipe-pause" => 3,
        "pipe-time" => 2,
        "train" | "serve" | "env" | "args" | "may-fail" | "all" | "hostname-in-hosts" => 0,
        "only-if-unreachable" => 2,
        _ => 1,
    }
}

/// Whether a TCP connection to HOST:PORT opens within 2 s.
fn reachable(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// Opens a Pipe mode FIFO of `/opt/ml/input/data`, waiting up to 10 s for it to appear (a
/// FIFO that exists blocks the open until its writer comes).
fn open_fifo(name: &str) -> std::io::Result<fs::File> {
    let path = Path::new("/opt/ml/input/data").join(name);
    let end = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > end {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} never appeared", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::File::open(&path)
}

/// Copies `from` to a new file `to`, leaving runs of zeros as holes; returns the bytes read.
fn copy_sparse(from: &mut impl std::io::Read, to: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut out = fs::File::create(to)?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        if buffer[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buffer[..n])?;
        }
        total += n as u64;
    }
    out.set_len(total)?;
    Ok(total)
}

fn current_host() -> String {
    fs::read_to_string("/opt/ml/input/config/resourceconfig.json")
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["current_host"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Retries `f` for up to 10 s: peers start at about the same time, not at the same instant.
fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn main() {
    let host = current_host();
    let mut args: Vec<String> = std::env::args().skip(1).map(|a| a.replace("{host}", &host)).collect();
    // Run as `sh -c "PROGRAM STEP ARG ..."` (a shell-form ENTRYPOINT): the steps are one
    // string, after the program the shell would start (the probe itself).
    if args.first().is_some_and(|a| a == "-c") {
        args = args.get(1).map(|s| s.split_whitespace().skip(1).map(str::to_string).collect()).unwrap_or_default();
    }
    // Started as SageMaker starts an image (`train`, no entrypoint of the request's own: a
    // tuning job's definitions cannot name one), the steps come from the environment.
    if args.iter().all(|a| a == "train")
        && let Ok(steps) = std::env::var("PROBE_STEPS")
    {
        args = steps.split_whitespace().map(|a| a.replace("{host}", &host)).collect();
    }
    let mut may_fail = false;
    let mut term_code: Option<i32> = None;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut i = 0;
    let take = |n: usize, i: &mut usize| -> Vec<String> {
        let out = args.get(*i + 1..*i + 1 + n).map(<[String]>::to_vec);
        *i += n + 1;
        out.unwrap_or_else(|| {
            eprintln!("probe: step {} needs {n} argument(s)", args[*i - n - 1]);
            std::process::exit(64)
        })
    };
    let check_term = |term_code: Option<i32>| {
        if let (Some(code), true) = (term_code, TERMINATED.load(Ordering::SeqCst)) {
            println!("probe: SIGTERM");
            let _ = fs::create_dir_all("/opt/ml/output/data");
            let _ = fs::write("/opt/ml/output/data/sigterm", "terminated\n");
            std::process::exit(code);
        }
    };
    let mut active = true;
    while i < args.len() {
        let step = args[i].clone();
        match step.as_str() {
            "only" => {
                active = args.get(i + 1) == Some(&host);
                i += 2;
                continue;
            }
            "only-if-exists" | "only-if-missing" => {
                let exists = args.get(i + 1).is_some_and(|p| Path::new(p).exists());
                active = exists == (step == "only-if-exists");
                i += 2;
                continue;
            }
            "only-if-hosts" => {
                let hosts = fs::read_to_string("/opt/ml/input/config/resourceconfig.json")
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["hosts"].as_array().map(|h| h.len()));
                active = hosts.is_some_and(|n| args.get(i + 1).and_then(|a| a.parse().ok()) == Some(n));
                i += 2;
                continue;
            }
            "only-if-unreachable" => {
                // Narrows what is active (an `only HOST` before it still holds).
                let port: u16 = args.get(i + 2).and_then(|p| p.parse().ok()).unwrap_or(0);
                let reachable = args.get(i + 1).is_some_and(|h| reachable(h, port));
                active = active && !reachable;
                i += 3;
                continue;
            }
            "all" => {
                active = true;
                i += 1;
                continue;
            }
            _ if !active => {
                i += 1 + arity(&step);
                continue;
            }
            _ => {}
        }
        let result: std::io::Result<()> = match step.as_str() {
            // SageMaker passes `train` to an image's own entrypoint; the probe accepts it as a no-op.
            "train" => {
                i += 1;
                Ok(())
            }
            "echo" => {
                println!("{}", take(1, &mut i)[0]);
                Ok(())
            }
            "stderr" => {
                eprintln!("{}", take(1, &mut i)[0]);
                Ok(())
            }
            "write" => {
                let a = take(2, &mut i);
                let path = Path::new(&a[0]);
                path.parent().map(fs::create_dir_all).transpose().and_then(|_| fs::write(path, &a[1]))
            }
            "append" => {
                let a = take(2, &mut i);
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&a[0])
                    .and_then(|mut f| std::io::Write::write_all(&mut f, a[1].as_bytes()))
            }
            "rm" => {
                let a = take(1, &mut i);
                fs::remove_file(&a[0])
            }
            "rmtree" => {
                let a = take(1, &mut i);
                fs::remove_dir_all(&a[0])
            }
            "mknod" => {
                let a = take(1, &mut i);
                let path = std::ffi::CString::new(a[0].as_bytes()).unwrap_or_default();
                // SAFETY: a valid NUL-terminated path; mknod only reads it.
                match unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            }
            "threads" => {
                let n: usize = take(1, &mut i)[0].parse().unwrap_or(0);
                let mut started = 0;
                for _ in 0..n {
                    let spawned = std::thread::Builder::new()
                        .stack_size(64 << 10)
                        .spawn(|| std::thread::sleep(Duration::from_secs(3600)));
                    if spawned.is_err() {
                        break;
                    }
                    started += 1;
                }
                println!("probe: started {started} threads");
                Ok(())
            }
            "spew" => {
                let n: u64 = take(1, &mut i)[0].parse().unwrap_or(0);
                let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
                (1..=n)
                    .try_for_each(|k| std::io::Write::write_fmt(&mut out, format_args!("{k}\n")))
                    .and_then(|()| std::io::Write::flush(&mut out))
            }
            "print" => {
                let a = take(1, &mut i);
                print!("{}", a[0]);
                std::io::Write::flush(&mut std::io::stdout())
            }
            "longline" => {
                let n: usize = take(1, &mut i)[0].parse().unwrap_or(0);
                let mut line = vec![b'x'; n];
                line.push(b'\n');
                std::io::Write::write_all(&mut std::io::stdout(), &line)
            }
            "mkfifo" => {
                let a = take(1, &mut i);
                let path = std::ffi::CString::new(a[0].as_bytes()).unwrap_or_default();
                // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
                match unsafe { libc::mkfifo(path.as_ptr(), 0o644) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            }
            "symlink" => {
                let a = take(2, &mut i);
                std::os::unix::fs::symlink(&a[0], &a[1])
            }
            "copy" => {
                let a = take(2, &mut i);
                copy_tree(Path::new(&a[0]), Path::new(&a[1]))
            }
            "cat" => {
                let a = take(1, &mut i);
                fs::read_to_string(&a[0]).map(|t| print!("{t}"))
            }
            "env" => {
                i += 1;
                let mut vars: Vec<(String, String)> = std::env::vars().collect();
                vars.sort();
                vars.iter().for_each(|(k, v)| println!("{k}={v}"));
                Ok(())
            }
            "args" => {
                i += 1;
                let all: Vec<String> = std::env::args().collect();
                println!("{}", serde_json::to_string(&all).unwrap_or_default());
                Ok(())
            }
            "sparse" => {
                // A file of SIZE bytes that is all hole: nothing written, nothing on disk.
                let a = take(2, &mut i);
                let size: u64 = a[1].parse().unwrap_or(0);
                fs::File::create(&a[0]).and_then(|f| f.set_len(size))
            }
            "pipe" => {
                let a = take(3, &mut i);
                // N: epochs 0..N; A..B: epochs A to B-1 (after a `pipe-head`, say).
                let epochs = match a[1].split_once("..") {
                    Some((from, to)) => from.parse().unwrap_or(0)..to.parse().unwrap_or(0),
                    None => 0..a[1].parse::<u64>().unwrap_or(1),
                };
                (|| -> std::io::Result<()> {
                    fs::create_dir_all(&a[2])?;
                    for epoch in epochs {
                        let name = format!("{}_{epoch}", a[0]);
                        let mut fifo = open_fifo(&name)?;
                        let n = copy_sparse(&mut fifo, &Path::new(&a[2]).join(&name))?;
                        println!("pipe {name} bytes={n}");
                    }
                    Ok(())
                })()
            }
            "pipe-time" => {
                let a = take(2, &mut i);
                (|| -> std::io::Result<()> {
                    use std::io::Read;
                    for epoch in 0..a[1].parse::<u64>().unwrap_or(1) {
                        let name = format!("{}_{epoch}", a[0]);
                        let opened = Instant::now();
                        let mut fifo = open_fifo(&name)?;
                        let mut buffer = vec![0u8; 1 << 20];
                        let (mut bytes, mut first) = (0u64, None);
                        loop {
                            let n = fifo.read(&mut buffer)?;
                            if n == 0 {
                                break;
                            }
                            first.get_or_insert_with(Instant::now);
                            bytes += n as u64;
                        }
                        let first = first.unwrap_or_else(Instant::now);
                        println!(
                            "pipe-time {name} bytes={bytes} first_byte_ms={:.3} seconds={:.4}",
                            (first - opened).as_secs_f64() * 1000.0,
                            first.elapsed().as_secs_f64()
                        );
                    }
                    Ok(())
                })()
            }
            "pipe-head" => {
                let a = take(3, &mut i);
                let want: usize = a[2].parse().unwrap_or(0);
                let name = format!("{}_{}", a[0], a[1]);
                open_fifo(&name).and_then(|mut fifo| {
                    use std::io::Read;
                    let mut head = vec![0u8; want];
                    fifo.read_exact(&mut head)?;
                    println!("pipe {name} closed after {want} bytes");
                    Ok(())
                })
            }
            "pipe-pause" => {
                // A training loop that stops reading for a while (an evaluation, a slow step).
                let a = take(3, &mut i);
                let seconds: u64 = a[2].parse().unwrap_or(0);
                let name = format!("{}_{}", a[0], a[1]);
                open_fifo(&name).and_then(|mut fifo| {
                    use std::io::Read;
                    let mut first = [0u8; 1];
                    fifo.read_exact(&mut first)?;
                    std::thread::sleep(Duration::from_secs(seconds));
                    let rest = std::io::copy(&mut fifo, &mut std::io::sink())?;
                    println!("pipe {name} bytes={} after a {seconds} s pause", rest + 1);
                    Ok(())
                })
            }
            "exists" => {
                let path = take(1, &mut i).remove(0);
                println!("exists {path}={}", Path::new(&path).exists());
                Ok(())
            }
            "count-files" => {
                // Every regular file below DIR, and their bytes: what a channel holds.
                let top = std::path::PathBuf::from(&take(1, &mut i)[0]);
                let counted = (|| -> std::io::Result<(u64, u64)> {
                    let (mut files, mut bytes) = (0u64, 0u64);
                    let mut todo = vec![top];
                    while let Some(dir) = todo.pop() {
                        for entry in fs::read_dir(&dir)?.flatten() {
                            let meta = entry.metadata()?;
                            if meta.is_dir() {
                                todo.push(entry.path());
                            } else if meta.is_file() {
                                files += 1;
                                bytes += meta.len();
                            }
                        }
                    }
                    Ok((files, bytes))
                })();
                counted.map(|(files, bytes)| println!("files={files} bytes={bytes}"))
            }
            "curve" => {
                let spec = take(1, &mut i)[0].clone();
                let mut parts = spec.split(':');
                let (hp, n, ms) = (parts.next().unwrap_or(""), parts.next(), parts.next());
                let n: u32 = n.and_then(|n| n.parse().ok()).unwrap_or(1);
                let ms: u64 = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
                let x: Option<f64> = fs::read_to_string("/opt/ml/input/config/hyperparameters.json")
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v.get(hp).and_then(|x| x.as_str()).and_then(|x| x.trim().parse().ok()));
                match x {
                    None => Err(std::io::Error::other(format!("no float hyperparameter {hp}"))),
                    Some(x) => {
                        for e in 1..=n {
                            println!("epoch={e}\tloss={:.6}", x * (1.0 + 1.0 / f64::from(e)));
                            let end = Instant::now() + Duration::from_millis(ms);
                            while Instant::now() < end {
                                check_term(term_code);
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                        Ok(())
                    }
                }
            }
            "sleep" => {
                let secs: f64 = take(1, &mut i)[0].parse().unwrap_or(0.0);
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    check_term(term_code);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            }
            "on-term" => {
                term_code = Some(take(1, &mut i)[0].parse().unwrap_or(0));
                unsafe {
                    libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
                }
                Ok(())
            }
            "alloc" => {
                let mb: usize = take(1, &mut i)[0].parse().unwrap_or(0);
                for _ in 0..mb {
                    hoard.push(vec![1u8; 1 << 20]);
                }
                println!("probe: holding {} MiB", hoard.len());
                Ok(())
            }
            "resolve" => {
                let name = take(1, &mut i)[0].clone();
                retry(|| std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 1)).map(|_| ()))
                    .map(|_| println!("resolved {name}"))
            }
            "listen" => {
                let port: u16 = take(1, &mut i)[0].parse().unwrap_or(0);
                std::net::TcpListener::bind(("0.0.0.0", port)).and_then(|l| l.accept()).and_then(|(stream, _)| {
                    let mut line = String::new();
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line)?;
                    println!("probe: got {}", line.trim_end());
                    Ok(())
                })
            }
            "serve" => serve(),
            "listen-forever" => {
                let port: u16 = take(1, &mut i)[0].parse().unwrap_or(0);
                std::net::TcpListener::bind(("0.0.0.0", port)).map(|l| {
                    println!("probe: listening on {port}");
                    l.incoming().for_each(drop)
                })
            }
            "send" => {
                let a = take(3, &mut i);
                let port: u16 = a[1].parse().unwrap_or(0);
                retry(|| std::net::TcpStream::connect((a[0].as_str(), port)))
                    .and_then(|mut s| std::io::Write::write_all(&mut s, format!("{}\n", a[2]).as_bytes()))
                    .map(|_| println!("probe: sent to {}", a[0]))
            }
            "may-fail" => {
                i += 1;
                may_fail = true;
                Ok(())
            }
            "alloc-share" => {
                let share: f64 = take(1, &mut i)[0].parse().unwrap_or(0.0);
                let limit = ["/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"]
                    .iter()
                    .find_map(|p| fs::read_to_string(p).ok()?.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                let mb = (limit * share / f64::from(1 << 20)) as usize;
                for _ in 0..mb {
                    hoard.push(vec![1u8; 1 << 20]);
                }
                println!("probe: holding {mb} MiB of a {} MiB limit", (limit / f64::from(1 << 20)) as u64);
                Ok(())
            }
            "hostname-in-hosts" => {
                i += 1;
                let name = fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
                let config = fs::read_to_string("/opt/ml/input/config/resourceconfig.json").unwrap_or_default();
                let hosts: Vec<String> = serde_json::from_str::<serde_json::Value>(&config)
                    .ok()
                    .and_then(|v| {
                        v["hosts"].as_array().map(|a| a.iter().filter_map(|h| h.as_str().map(str::to_string)).collect())
                    })
                    .unwrap_or_default();
                if hosts.contains(&name) {
                    Ok(())
                } else {
                    let _ = fs::create_dir_all("/opt/ml/output");
                    let _ = fs::write(
                        "/opt/ml/output/failure",
                        format!("AlgorithmError: this host ({name}) is not in {hosts:?}"),
                    );
                    std::process::exit(1)
                }
            }
            "exit" => std::process::exit(take(1, &mut i)[0].parse().unwrap_or(1)),
            other => {
                eprintln!("probe: unknown step '{other}'");
                std::process::exit(64)
            }
        };
        if let Err(e) = result {
            if may_fail {
                println!("probe: step failed: {step}: {e}");
            } else {
                eprintln!("probe: step '{step}' failed: {e}");
                std::process::exit(65);
            }
        }
        std::io::Write::flush(&mut std::io::stdout()).ok();
    }
}

/// The inference side, as the container's `Environment` says:
/// - `PROBE_PING`: `ok` (default); `never` (every ping answers 500); `after:SECS` (500 until
///   then); `exit:CODE` (exits at once, never listening).
/// - `PROBE_INVOKE`: `echo` (default: the body back, with its content type); `headers` (the
///   request's headers as JSON); `id` (the container's host name); `crash` (exits in the
///   middle of the request); `sleep:SECS` (then echo); `status:CODE` (answers CODE);
///   `stream:N` (N chunks `part I`, 100 ms apart); `cat:PATH` (the file, or 404); `length` (the body's size);
///   `attributes` (the mode is the request's
///   `X-Amzn-SageMaker-Custom-Attributes`, `mode=status:400` say, else echo).
/// - `PROBE_LISTEN`: the address to bind (default 0.0.0.0); `PROBE_TERM=ignore` ignores SIGTERM.
///
/// Every request prints `probe: invoked (N bytes)`.
fn serve() -> ! {
    use sample_algorithms::http::{self, Body, Response};
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let (ping, invoke) = (env("PROBE_PING", "ok"), env("PROBE_INVOKE", "echo"));
    if let Some(code) = ping.strip_prefix("exit:") {
        println!("probe: exiting before serving");
        std::process::exit(code.parse().unwrap_or(1));
    }
    let started = Instant::now();
    let healthy_after = ping.strip_prefix("after:").and_then(|s| s.parse().ok()).map(Duration::from_secs_f64);
    let hostname = fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let address = env("PROBE_LISTEN", "0.0.0.0");
    let on_term = env("PROBE_TERM", "handle") != "ignore";
    http::serve_on(&address, 8080, on_term, move |request| match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/ping") => {
            let healthy = match (ping.as_str(), healthy_after) {
                ("never", _) => false,
                (_, Some(after)) => started.elapsed() >= after,
                _ => true,
            };
            if healthy { Response::new(200, "text/plain", "") } else { Response::new(500, "text/plain", "not ready") }
        }
        ("POST", "/invocations") => {
            println!("probe: invoked ({} bytes)", request.body.len());
            let content_type = request.header("content-type").unwrap_or("application/octet-stream").to_string();
            let chosen = match invoke.as_str() {
                "attributes" => request
                    .header("x-amzn-sagemaker-custom-attributes")
                    .and_then(|a| a.strip_prefix("mode="))
                    .unwrap_or("echo")
                    .to_string(),
                other => other.to_string(),
            };
            let (mode, arg) = chosen.split_once(':').unwrap_or((chosen.as_str(), ""));
            match mode {
                "headers" => {
                    let map: serde_json::Map<String, serde_json::Value> =
                        request.headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                    Response::new(200, "application/json", serde_json::Value::Object(map).to_string())
                }
                "id" => Response::new(200, "text/plain", hostname.clone()),
                "length" => Response::new(200, "text/plain", request.body.len().to_string()),
                "cat" => match fs::read(arg) {
                    Ok(bytes) => Response::new(200, "application/octet-stream", bytes),
                    Err(e) => Response::new(404, "text/plain", format!("{arg}: {e}")),
                },
                "crash" => {
                    println!("probe: crashing mid-request");
                    std::process::exit(3)
                }
                "sleep" => {
                    std::thread::sleep(Duration::from_secs_f64(arg.parse().unwrap_or(1.0)));
                    Response::new(200, &content_type, request.body.clone())
                }
                "status" => {
                    let code = arg.parse().unwrap_or(500);
                    Response::new(code, "text/plain", format!("probe failed with {code}"))
                }
                "stream" => {
                    let n: usize = arg.parse().unwrap_or(3);
                    let chunks = (1..=n).map(|i| format!("part {i}\n").into_bytes()).collect();
                    Response {
                        body: Body::Chunks(chunks, Duration::from_millis(100)),
                        ..Response::new(200, "text/plain", "")
                    }
                }
                _ => Response::new(200, &content_type, request.body.clone()),
            }
        }
        _ => Response::new(404, "text/plain", "not found"),
    })
}
