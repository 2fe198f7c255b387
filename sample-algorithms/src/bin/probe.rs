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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    while i < args.len() {
        let step = args[i].clone();
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
                path.parent()
                    .map(fs::create_dir_all)
                    .transpose()
                    .and_then(|_| fs::write(path, &a[1]))
            }
            "append" => {
                let a = take(2, &mut i);
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&a[0])
                    .and_then(|mut f| std::io::Write::write_all(&mut f, a[1].as_bytes()))
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
            "exit" => std::process::exit(take(1, &mut i)[0].parse().unwrap_or(1)),
            other => {
                eprintln!("probe: unknown step '{other}'");
                std::process::exit(64)
            }
        };
        if let Err(e) = result {
            eprintln!("probe: step '{step}' failed: {e}");
            std::process::exit(65);
        }
        std::io::Write::flush(&mut std::io::stdout()).ok();
    }
}
