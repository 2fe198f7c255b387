//! The input cache: a warm re-run downloads nothing (counted at the S3 server), a changed
//! object is fetched again, large objects arrive whole through ranged reads, and no algorithm
//! can write into the cache through its channel folder.

use crate::harness::*;

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
