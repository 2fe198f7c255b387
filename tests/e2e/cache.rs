//! The input cache: a warm re-run downloads nothing (counted at the S3 server), a changed
//! object is fetched again, large objects arrive whole through ranged reads, and no algorithm
//! can write into the cache through its channel folder.

use crate::harness::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn a_warm_rerun_downloads_nothing_and_a_changed_object_is_fetched_again() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("cache-{}", unique()));
    // Big enough to be fetched in several ranges.
    let big: Vec<u8> = (0..40u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    bucket.put("train/a.csv", b"one\n");
    bucket.put("train/b.csv", b"two\n");
    bucket.put("train/big.bin", &big);
    let steps = [
        "copy",
        "/opt/ml/input/data/train",
        "/opt/ml/model/seen",
        "write",
        "/opt/ml/input/data/train/a.csv",
        "overwritten by the algorithm",
        "write",
        "/opt/ml/input/data/train/new.csv",
        "added by the algorithm",
    ];
    let seen = |name: &str| tar_entries(&bucket.get(&format!("output/{name}/output/model.tar.gz")).unwrap());

    let cold = sm.train(&probe_request("cache-cold", &bucket, &steps), &[]);
    assert_eq!(cold.code, 0, "{cold:?}");
    // Not a terminal: progress comes as plain lines.
    assert!(cold.stderr.contains("smlocal: downloaded 40.0 MiB of 40.0 MiB"), "{cold:?}");
    let after_cold = bucket.object_gets();
    assert!(after_cold >= 5, "2 small objects and at least 3 ranges of the big one, got {after_cold} GETs");
    assert_eq!(file_entry(&seen("cache-cold"), "seen/big.bin"), big);

    // (The test's own reads of the results are GETs too: count around the runs only.)
    let before_warm = bucket.object_gets();
    let warm = sm.train(&probe_request("cache-warm", &bucket, &steps), &[]);
    assert_eq!(warm.code, 0, "{warm:?}");
    assert_eq!(bucket.object_gets(), before_warm, "a warm re-run must download nothing");
    let entries = seen("cache-warm");
    assert_eq!(file_entry(&entries, "seen/a.csv"), b"one\n", "the first run's write reached the cache");
    assert!(!entries.iter().any(|(p, _)| p == "seen/new.csv"), "the first run's new file reached the cache");
    assert_eq!(file_entry(&entries, "seen/big.bin"), big);

    bucket.put("train/b.csv", b"changed\n");
    let before_change = bucket.object_gets();
    let changed = sm.train(&probe_request("cache-changed", &bucket, &steps), &[]);
    assert_eq!(changed.code, 0, "{changed:?}");
    assert_eq!(bucket.object_gets(), before_change + 1, "only the changed object is fetched");
    assert_eq!(file_entry(&seen("cache-changed"), "seen/b.csv"), b"changed\n");

    let shown = Run::from(sm.command().arg("cache").output().unwrap());
    assert!(shown.stdout.contains("objects: 4"), "{shown:?}");
    let pruned = Run::from(sm.command().args(["cache", "prune", "--max-size", "0"]).output().unwrap());
    assert!(pruned.stdout.starts_with("removed 4 object(s)"), "{pruned:?}");
    assert!(Run::from(sm.command().arg("cache").output().unwrap()).stdout.contains("objects: 0"));
}

#[test]
fn several_hosts_share_one_download_and_each_writes_only_its_own_copy() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("cache-hosts-{}", unique()));
    bucket.put("train/a.csv", b"shared\n");
    let steps = [
        "cat",
        "/opt/ml/input/data/train/a.csv",
        "write",
        "/opt/ml/input/data/train/a.csv",
        "{host} was here",
        "cat",
        "/opt/ml/input/data/train/a.csv",
        "echo",
        "",
    ];
    let mut req = probe_request("cache-hosts", &bucket, &steps);
    req["ResourceConfig"] =
        serde_json::json!({"InstanceType": "ml.t3.medium", "InstanceCount": 3, "VolumeSizeInGB": 1});
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(bucket.object_gets(), 1, "FullyReplicated data is downloaded once");
    for host in ["algo-1", "algo-2", "algo-3"] {
        assert!(run.stdout.contains(&format!("{host} | shared")), "{run:?}");
        assert!(run.stdout.contains(&format!("{host} | {host} was here")), "{run:?}");
    }
}

#[test]
fn a_download_cut_short_never_enters_the_cache() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("cache-cut-{}", unique()));
    bucket.put("train/cut-short.bin", &vec![7u8; 300_000]);
    let run = sm.train(&probe_request("cache-cut", &bucket, &["echo", "must not run"]), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let reason = sm.describe("cache-cut")["FailureReason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("ClientError: Data download failed") && reason.contains("cut-short.bin"), "{reason}");
    let cache = sm.home.path().join("cache");
    // The entries' folder (named for the SHA-256 keys) exists once a fetch began.
    let objects: Vec<_> = std::fs::read_dir(cache.join("sha256")).expect("the cache's entries").flatten().collect();
    assert!(objects.is_empty(), "a partial download entered the cache: {objects:?}");
    let partial: Vec<_> = std::fs::read_dir(cache.join("tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(partial.is_empty(), "a partial download was left behind: {partial:?}");
}

#[test]
fn where_an_overlay_cannot_be_mounted_each_host_gets_a_copy() {
    images();
    // Overlay options cannot carry a ',' in a layer path: smlocal must fall back to copies.
    let sm = Smlocal { home: tempfile::Builder::new().prefix("smlocal,home-").tempdir().unwrap() };
    let bucket = s3().bucket(&format!("cache-copy-{}", unique()));
    bucket.put("train/a.csv", b"from s3\n");
    let steps = ["cat", "/opt/ml/input/data/train/a.csv", "write", "/opt/ml/input/data/train/a.csv", "changed"];
    let first = sm.train(&probe_request("copy-1", &bucket, &steps), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("algo-1 | from s3"), "{first:?}");
    assert!(first.stderr.contains("copying the channels instead of mounting them"), "{first:?}");
    let second = sm.train(&probe_request("copy-2", &bucket, &steps), &[]);
    assert!(second.stdout.contains("algo-1 | from s3"), "the first run's write reached the cache: {second:?}");
}

#[test]
fn a_cache_made_with_the_old_unstable_keys_is_dropped_once_with_a_note_and_rebuilt() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("cache-old-{}", unique()));
    bucket.put("train/a.csv", b"fresh\n");
    // What a build keyed by std's DefaultHasher left: 32 hex digits per entry, in objects/.
    // Its entry for a.csv holds other bytes, as a key that now means another object would.
    let old = sm.home.path().join("cache/objects");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("0123456789abcdef0123456789abcdef"), b"stale\n").unwrap();
    let steps = ["cat", "/opt/ml/input/data/train/a.csv"];
    let before = bucket.object_gets();
    let first = sm.train(&probe_request("cache-old-1", &bucket, &steps), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first.stderr.contains("cache: dropped 1 object(s) (6 B) that an earlier smlocal keyed by an unstable hash"),
        "{first:?}"
    );
    assert!(first.stdout.contains("algo-1 | fresh"), "never the old layout's bytes: {first:?}");
    assert!(!old.exists(), "the old layout is gone");
    assert_eq!(bucket.object_gets(), before + 1, "the object was fetched again");
    // Rebuilt under the stable keys: the next run is a hit and says nothing about old entries.
    let second = sm.train(&probe_request("cache-old-2", &bucket, &steps), &[]);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(!second.stderr.contains("dropped"), "{second:?}");
    assert_eq!(bucket.object_gets(), before + 1, "the rebuilt entry is hit");
}

/// A channel of `count` small objects of distinct content under `prefix`.
fn small_objects(bucket: &Bucket, prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let name = format!("part-{i:03}.bin");
            let bytes = pseudo_random(4096 + i * 37, i as u64 + 1);
            bucket.put(&format!("{prefix}{name}"), &bytes);
            (name, bytes)
        })
        .collect()
}

/// Every object of the channel, byte-exact, in the job's model.
fn assert_saw_all(bucket: &Bucket, job: &str, objects: &[(String, Vec<u8>)]) {
    let archive = bucket.get(&format!("output/{job}/output/model.tar.gz")).unwrap_or_else(|| panic!("{job}: no model"));
    let model = tar_entries(&archive);
    for (name, bytes) in objects {
        assert_eq!(&file_entry(&model, &format!("seen/{name}")), bytes, "{job}: {name}");
    }
}

/// The most GETs any object under `prefix` took, and the total.
fn gets_under(bucket: &Bucket, prefix: &str) -> (u64, u64) {
    let gets = crate::s3_server::object_gets(&bucket.name);
    let counts: Vec<u64> = gets.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, n)| *n).collect();
    (counts.iter().copied().max().unwrap_or(0), counts.iter().sum())
}

/// Starts one `smlocal train` per request at once (with `env`), and asserts every one completed.
fn train_at_once(sm: &Smlocal, requests: Vec<serde_json::Value>, env: &[(&str, &str)]) {
    let runs: Vec<_> = requests
        .iter()
        .map(|request| {
            let child = sm
                .command()
                .args(["train", &request_file(sm, request)])
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run smlocal");
            (request["TrainingJobName"].clone(), child)
        })
        .collect();
    for (job, child) in runs {
        let run = Run::from(child.wait_with_output().expect("wait for smlocal"));
        assert_eq!(run.code, 0, "{job}: {run:?}");
    }
}

const COPY: [&str; 3] = ["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"];

#[test]
fn eight_jobs_of_one_server_share_a_cold_channel_and_fetch_each_object_at_most_twice() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("share-{}", unique()));
    let objects = small_objects(&bucket, "train/", 100);
    let server = sm.serve(&["--max-parallel", "8"]);
    let name = format!("share-{}", unique());
    let created = calls(&sm, &server, &["create-many", &request_file(&sm, &probe_request(&name, &bucket, &COPY)), "8"]);
    assert_eq!(created.as_array().map(|a| a.iter().filter(|r| r.get("error").is_none()).count()), Some(8));
    for i in 0..8 {
        let job = format!("{name}-{i}");
        let record = wait_for(&sm, &job, "finished", |r| r["TrainingJobStatus"] != "InProgress");
        assert_eq!(record["TrainingJobStatus"], "Completed", "{record:#}");
    }
    // Counted before the test reads the models (those reads are GETs too).
    let (most, total) = gets_under(&bucket, "train/");
    eprintln!("eight jobs in one server: {total} GETs for 100 objects, at most {most} for one");
    assert!(most <= 2, "an object was fetched {most} times");
    for i in 0..8 {
        assert_saw_all(&bucket, &format!("{name}-{i}"), &objects);
    }
}

#[test]
fn eight_train_processes_share_a_cold_channel_and_fetch_each_object_at_most_twice() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("procs-{}", unique()));
    let objects = small_objects(&bucket, "train/", 100);
    let name = format!("procs-{}", unique());
    let requests = (0..8).map(|i| probe_request(&format!("{name}-{i}"), &bucket, &COPY)).collect();
    train_at_once(&sm, requests, &[]);
    let (most, total) = gets_under(&bucket, "train/");
    eprintln!("eight smlocal train processes: {total} GETs for 100 objects, at most {most} for one");
    assert!(most <= 2, "an object was fetched {most} times");
    for i in 0..8 {
        assert_saw_all(&bucket, &format!("{name}-{i}"), &objects);
    }
}

#[test]
fn eviction_and_prune_never_take_an_object_from_a_job_that_is_staging_it() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("evict-{}", unique()));
    let channels = [small_objects(&bucket, "a/", 60), small_objects(&bucket, "b/", 60)];
    let name = format!("evict-{}", unique());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // `smlocal cache prune --max-size 0` over and over while the jobs stage.
    let pruner = {
        let (done, home) = (done.clone(), sm.home.path().to_path_buf());
        let mut prune = sm.command();
        prune.args(["cache", "prune", "--max-size", "0"]).env("SMLOCAL_HOME", home);
        std::thread::spawn(move || {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = prune.output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                runs += 1;
            }
            runs
        })
    };
    // A 1-byte cache: every job's eviction tries to remove every other job's objects.
    let channel_of = |i: usize| i % 2;
    let requests = (0..8)
        .map(|i| {
            let mut request = probe_request(&format!("{name}-{i}"), &bucket, &COPY);
            let prefix = ["a/", "b/"][channel_of(i)];
            request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!(bucket.uri(prefix));
            request
        })
        .collect();
    train_at_once(&sm, requests, &[("SMLOCAL_CACHE_MAX", "1")]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let prunes = pruner.join().unwrap();
    assert!(prunes > 0, "the pruner never ran");
    for i in 0..8 {
        assert_saw_all(&bucket, &format!("{name}-{i}"), &channels[channel_of(i)]);
    }
}

#[test]
fn a_fetcher_killed_mid_download_blocks_no_one_and_leaves_nothing() {
    let server = S3Server::start();
    let sm = Smlocal::new();
    let bucket = server.bucket("killed");
    let big = pseudo_random(40 << 20, 9);
    bucket.put("train/big.bin", &big);
    let with_server = |mut cmd: std::process::Command| {
        cmd.env("AWS_ENDPOINT_URL", &server.endpoint);
        cmd
    };
    let file = request_file(&sm, &probe_request("killed-first", &bucket, &COPY));
    let mut first =
        with_server(sm.command()).args(["train", &file]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let tmp = sm.home.path().join("cache/tmp");
    let partials = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    wait_until("the first job's download", Duration::from_secs(30), || !partials().is_empty());
    // Frozen mid-download, then killed: its lock and its partial file are all it leaves.
    server.pause();
    first.kill().unwrap();
    first.wait().unwrap();
    server.resume();
    assert!(!partials().is_empty());

    let file = request_file(&sm, &probe_request("killed-second", &bucket, &COPY));
    let second = Run::from(with_server(sm.command()).args(["train", &file]).output().unwrap());
    assert_eq!(second.code, 0, "{second:?}");
    assert!(partials().is_empty(), "the killed fetcher's partial file was left: {:?}", partials());
    let model = tar_entries(&bucket.get("output/killed-second/output/model.tar.gz").unwrap());
    assert_eq!(file_entry(&model, "seen/big.bin"), big);
}
