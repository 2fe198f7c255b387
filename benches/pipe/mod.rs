//! j. Pipe mode (issue "Every input mode"): the same reader (the probe, in a container)
//! times a channel's FIFO fed by smlocal and the same bytes fed by `cat` into a FIFO:
//!   - warm: MB/s of epochs read from the cache (the first epoch filled it), against `cat`
//!     of the same bytes from a file (goal ≥ 0.9×);
//!   - cold: milliseconds from opening `train_0` to its first byte with nothing cached,
//!     against the time File mode's staging path takes to download 1% of the same channel
//!     (a hundredth of its whole staging time; goal: below it).
//!
//! The FIFOs smlocal writes have a 1 MiB buffer; `cat` writes into the kernel's default
//! 64 KiB one.

use super::{harness, row};
use object_store::ObjectStoreExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The probe's `pipe-time` lines: (epoch, bytes, first byte ms, seconds after it).
fn timings(stdout: &str) -> Vec<(u64, u64, f64, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split("pipe-time ").nth(1)?;
            let mut fields = rest.split_whitespace();
            let epoch = fields.next()?.rsplit('_').next()?.parse().ok()?;
            let mut value = |key: &str| fields.next()?.strip_prefix(key)?.parse::<f64>().ok();
            Some((epoch, value("bytes=")? as u64, value("first_byte_ms=")?, value("seconds=")?))
        })
        .collect()
}

pub(crate) async fn pipe_mode(root: &Path, tiny: bool) {
    let (count, bytes) = if tiny { (8, 1 << 20) } else { (64, 16 << 20) };
    let total = (count * bytes) as u64;
    let bucket = harness::s3().bucket(&format!("bench-pipe-{}", harness::unique()));
    super::scale::upload(&bucket.store(), "pipe", count, bytes).await;
    let epochs = 4;

    // smlocal: one job, a cache of its own: epoch 0 cold, the others from the cache.
    let sm = harness::Smlocal::new();
    let steps = ["pipe-time", "train", &epochs.to_string()];
    let mut request = harness::probe_request("bench-pipe", &bucket, &steps);
    request["AlgorithmSpecification"]["TrainingInputMode"] = serde_json::json!("Pipe");
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = serde_json::json!(bucket.uri("pipe/"));
    let run = tokio::task::block_in_place(|| sm.train(&request, &[]));
    assert_eq!(run.code, 0, "{run:?}");
    let ours = timings(&run.stdout);
    assert_eq!(ours.len(), epochs, "{run:?}");
    assert!(ours.iter().all(|t| t.1 == total), "{ours:?}");
    let warm = ours[1..].iter().map(|t| t.1 as f64 / t.3).fold(0.0, f64::max) / 1e6;

    // The floor: the same bytes, `cat` into a FIFO the same reader reads.
    let dir = root.join("pipe-floor");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = root.join("pipe-floor.bin");
    {
        use std::io::Write;
        let mut out = std::fs::File::create(&file).expect("file");
        for i in 0..count {
            let key = format!("pipe/part-{i:06}.bin");
            let got = bucket.store().get(&object_store::path::Path::from(key)).await.expect("object");
            out.write_all(&got.bytes().await.expect("object")).expect("write");
        }
    }
    let mut cat_rates = Vec::new();
    for epoch in 0..epochs {
        let fifo = dir.join(format!("x_{epoch}"));
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
    }
    let feeder = {
        let (dir, file) = (dir.clone(), file.clone());
        std::thread::spawn(move || {
            for epoch in 0..epochs {
                let fifo = dir.join(format!("x_{epoch}"));
                let fed = Command::new("sh")
                    .arg("-c")
                    .arg(format!("cat '{}' > '{}'", file.display(), fifo.display()))
                    .status()
                    .expect("cat");
                assert!(fed.success());
            }
        })
    };
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v"])
        .arg(format!("{}:/opt/ml/input/data", dir.display()))
        .args(["--entrypoint", harness::PROBE, harness::PROBE_IMAGE, "pipe-time", "x", &epochs.to_string()])
        .output()
        .expect("docker run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    feeder.join().expect("feeder");
    for t in timings(&String::from_utf8_lossy(&out.stdout)) {
        cat_rates.push(t.1 as f64 / t.3 / 1e6);
    }
    let cat = cat_rates.iter().copied().fold(0.0, f64::max);
    row("j. Pipe warm, MB/s vs cat into a FIFO", warm, cat, " MB/s");

    // Cold: the first byte of epoch 0 against 1% of File mode's staging of the same channel.
    let first_byte = ours[0].2;
    let job = super::plan_staging_job(&bucket.uri("pipe/"));
    let home = root.join("pipe-stage");
    let cache = smlocal::Cache::new(&home);
    let storage = smlocal::Storage::from_env();
    let progress = smlocal::Progress::default();
    // Staging counts a ranged object's bytes as its ranges land, not as they arrive, so 1%
    // is taken from the whole: the channel's staging time over 100.
    let started = Instant::now();
    smlocal::stage(&job, &home.join("work"), &storage, &cache, &progress).await.expect("stage");
    let one_percent = started.elapsed().as_secs_f64() * 1000.0 / 100.0;
    row("   Pipe cold first byte vs 1% staged (ms)", first_byte, one_percent, " ms");
}
