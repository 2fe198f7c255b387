//! `model.tar.gz` as other tools read it: GNU tar and Python's `tarfile` (what the SageMaker
//! SDK uses) read a multi-block parallel-gzip archive; `CompressionType: NONE` uploads the
//! model's files one by one, as SageMaker does.

use crate::harness::*;
use serde_json::json;
use std::process::Command;

#[test]
fn a_large_model_archive_reads_with_gnu_tar_and_python_tarfile() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("pack-{}", unique()));
    let weights = pseudo_random(6 << 20, 42);
    let text: String = (0..200_000).map(|i| format!("token {} {}\n", i % 1000, i % 7)).collect();
    bucket.put("train/weights.bin", &weights);
    bucket.put("train/vocab.txt", text.as_bytes());
    let steps =
        ["copy", "/opt/ml/input/data/train", "/opt/ml/model", "symlink", "vocab.txt", "/opt/ml/model/latest.txt"];
    let run = sm.train(&probe_request("pack-job", &bucket, &steps), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let archive = sm.home.path().join("model.tar.gz");
    let bytes = bucket.get("output/pack-job/output/model.tar.gz").unwrap();
    assert!(bytes.len() < weights.len() + text.len() / 3, "the text must be compressed: {} bytes", bytes.len());
    std::fs::write(&archive, &bytes).unwrap();

    let listed = Command::new("tar").arg("-tzvf").arg(&archive).output().unwrap();
    assert!(listed.status.success(), "GNU tar: {}", String::from_utf8_lossy(&listed.stderr));
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listing.contains("latest.txt -> vocab.txt") && listing.contains("weights.bin"), "{listing}");

    let script = r#"
import hashlib, sys, tarfile
with tarfile.open(sys.argv[1], "r:gz") as t:
    for name in ("weights.bin", "vocab.txt"):
        print(name, hashlib.sha256(t.extractfile(name).read()).hexdigest())
    print("latest.txt", t.getmember("latest.txt").linkname)
"#;
    let python =
        Command::new("python3").args(["-c", script]).arg(&archive).output().expect("python3 is needed for this test");
    assert!(python.status.success(), "tarfile: {}", String::from_utf8_lossy(&python.stderr));
    let sha = |data: &[u8]| {
        let out = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = out;
        std::io::Write::write_all(&mut out.stdin.take().unwrap(), data).unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let expected = format!("weights.bin {}\nvocab.txt {}\nlatest.txt vocab.txt\n", sha(&weights), sha(text.as_bytes()));
    assert_eq!(String::from_utf8_lossy(&python.stdout), expected);
}

#[test]
fn compression_type_none_uploads_the_model_files_one_by_one() {
    let (sm, bucket) = with_data("nocompress");
    let steps = [
        "write",
        "/opt/ml/model/weights.bin",
        "w",
        "write",
        "/opt/ml/model/sub/config.json",
        "{}",
        "symlink",
        "weights.bin",
        "/opt/ml/model/link",
    ];
    let mut req = probe_request("nocompress-job", &bucket, &steps);
    req["OutputDataConfig"]["CompressionType"] = json!("NONE");
    let run = sm.train(&req, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(bucket.get("output/nocompress-job/output/model/weights.bin").as_deref(), Some(&b"w"[..]));
    assert_eq!(bucket.get("output/nocompress-job/output/model/sub/config.json").as_deref(), Some(&b"{}"[..]));
    assert_eq!(bucket.get("output/nocompress-job/output/model.tar.gz"), None);
    assert!(run.stderr.contains("the symbolic link link -> weights.bin is not uploaded"), "{run:?}");
    assert_eq!(
        sm.describe("nocompress-job")["ModelArtifacts"]["S3ModelArtifacts"],
        bucket.uri("output/nocompress-job/output/model/")
    );
}

#[test]
fn a_sparse_twenty_gib_model_file_is_archived_as_holes_and_extracts_whole() {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("sparse-{}", unique()));
    bucket.put("train/a.csv", b"1\n");
    let size: u64 = 20 << 30;
    let steps = ["sparse", "/opt/ml/model/weights.bin", &size.to_string(), "write", "/opt/ml/model/tail.txt", "end"];
    let started = std::time::Instant::now();
    let run = sm.train(&probe_request("sparse-job", &bucket, &steps), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let took = started.elapsed();
    let bytes = bucket.get("output/sparse-job/output/model.tar.gz").unwrap();
    // A GNU sparse entry: the map of where data is, none of the 20 GiB of holes.
    assert!(bytes.len() < 64 << 10, "{} bytes for a file that is all holes", bytes.len());
    assert!(took < std::time::Duration::from_secs(60), "packing read the holes: {took:?}");
    let archive = sm.home.path().join("sparse.tar.gz");
    std::fs::write(&archive, &bytes).unwrap();
    // Python's tarfile (what the SDK and AWS's toolkit extract with) sees the whole file.
    let script = r#"
import sys, tarfile
with tarfile.open(sys.argv[1], "r:gz") as t:
    w = t.getmember("weights.bin")
    f = t.extractfile(w)
    f.seek(w.size - 4096)
    tail = f.read()
    print(w.size, w.issparse(), len(tail), tail.count(0), t.extractfile("tail.txt").read().decode())
"#;
    let python = Command::new("python3").args(["-c", script]).arg(&archive).output().expect("python3");
    assert!(python.status.success(), "tarfile: {}", String::from_utf8_lossy(&python.stderr));
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), format!("{size} True 4096 4096 end"));
    // GNU tar extracts it as holes again.
    let out = tempfile::tempdir().unwrap();
    let extracted = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(out.path()).status().unwrap();
    assert!(extracted.success());
    let meta = std::fs::metadata(out.path().join("weights.bin")).unwrap();
    assert_eq!(meta.len(), size);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) < 1024, "extracted with its holes");
}
