//! Turns the hosts' `/opt/ml/model` (or `/opt/ml/output/data`) folders into the one tarball
//! SageMaker uploads: paths relative to the folder, symlinks stored as symlinks and never
//! followed (a model folder may link anywhere on this machine), gzip-compressed. When several
//! hosts wrote the same path, the lowest-numbered host's version is kept and the conflict is
//! reported when the contents differ.

use crate::artifacts::gzip::ParallelGzip;
use crate::tree::{Beneath, EntryKind, TreeError};
use flate2::Compression;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot archive '{}' into '{}': {source}", path.display(), archive.display())]
    Io {
        path: PathBuf,
        archive: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// What went into an archive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    pub entries: usize,
    pub bytes: u64,
    /// Paths that hosts wrote with different contents; the first host's version was kept.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub path: String,
    /// Every host that wrote the path, the kept one first.
    pub hosts: Vec<String>,
}

/// Writes the union of several hosts' folders to `archive`.
pub(crate) fn pack_merged(sources: &[(String, Beneath)], archive: &Path) -> Result<Packed, ArtifactError> {
    let file = File::create(archive).map_err(|source| ArtifactError::Io {
        path: archive.into(),
        archive: archive.into(),
        source,
    })?;
    let (packed, mut out) = write_merged(sources, BufWriter::with_capacity(1 << 20, file), archive)?;
    out.flush().map_err(|source| ArtifactError::Io { path: archive.into(), archive: archive.into(), source })?;
    Ok(packed)
}

/// One path of the merged tree and the host copy that wins.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub relative: PathBuf,
    pub source: PathBuf,
    pub kind: Kind,
}

/// The union of several hosts' folders, in path order: for a path several hosts wrote, the
/// lowest-numbered host's copy, and a conflict when the contents differ. A path kept as a
/// file or link hides other hosts' entries beneath it.
pub(crate) fn merge(sources: &[(String, Beneath)]) -> Result<(Vec<Entry>, Vec<Conflict>), TreeError> {
    let mut tree: BTreeMap<PathBuf, Vec<(usize, PathBuf, Kind)>> = BTreeMap::new();
    for (index, (_, folder)) in sources.iter().enumerate() {
        // A folder the host never made (or a file in its place) adds nothing; a link in its
        // place is an error (see `crate::tree`), never followed.
        let walked = folder.walk(&mut |e| {
                let kind = match e.kind {
                    EntryKind::Dir => Kind::Dir,
                    EntryKind::File { len, .. } => Kind::File(len),
                    EntryKind::Link(target) => Kind::Link(target),
                    EntryKind::Special => {
                        tracing::warn!(path = %e.path.display(), "skipping a special file (socket, device or FIFO) that a tarball cannot carry");
                        return;
                    }
                };
                tree.entry(e.relative).or_default().push((index, e.path, kind));
        });
        match walked {
            Ok(()) => {}
            Err(e) if e.is_not_found() || matches!(e, TreeError::NotA { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut entries = Vec::new();
    let mut conflicts = Vec::new();
    let mut not_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (rel, copies) in tree {
        if rel.ancestors().skip(1).any(|a| not_dirs.contains(a)) {
            continue;
        }
        let (_, full, kind) = &copies[0];
        if copies[1..].iter().any(|(_, other, other_kind)| !same(full, kind, other, other_kind)) {
            conflicts.push(Conflict {
                path: rel.display().to_string(),
                hosts: copies.iter().map(|(i, _, _)| sources[*i].0.clone()).collect(),
            });
        }
        if *kind != Kind::Dir {
            not_dirs.insert(rel.clone());
        }
        entries.push(Entry { relative: rel, source: full.clone(), kind: kind.clone() });
    }
    Ok((entries, conflicts))
}

/// Streams the union of several hosts' folders as a gzip-compressed tar into `out`, in one
/// pass over the files and with gzip on every core. `archive` names the destination in
/// errors.
pub(crate) fn write_merged<W: Write>(
    sources: &[(String, Beneath)],
    out: W,
    archive: &Path,
) -> Result<(Packed, W), ArtifactError> {
    let err = |path: &Path| {
        let (path, archive) = (path.to_path_buf(), archive.to_path_buf());
        move |source| ArtifactError::Io { path, archive, source }
    };
    let (entries, conflicts) = merge(sources)?;
    let gz = ParallelGzip::new(out, Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut packed = Packed { conflicts, ..Packed::default() };
    for e in &entries {
        match e.kind {
            Kind::Dir => tar.append_dir(&e.relative, &e.source).map_err(err(&e.source))?,
            Kind::File(len) => {
                tar.append_path_with_name(&e.source, &e.relative).map_err(err(&e.source))?;
                packed.bytes += len;
            }
            Kind::Link(_) => tar.append_path_with_name(&e.source, &e.relative).map_err(err(&e.source))?,
        }
        packed.entries += 1;
    }
    let gz = tar.into_inner().map_err(err(archive))?;
    let out = gz.finish().map_err(err(archive))?;
    Ok((packed, out))
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Dir,
    File(u64),
    Link(PathBuf),
}

/// Whether two hosts' copies of a path are the same (files compared byte by byte).
fn same(a: &Path, a_kind: &Kind, b: &Path, b_kind: &Kind) -> bool {
    match (a_kind, b_kind) {
        (Kind::Dir, Kind::Dir) => true,
        (Kind::Link(x), Kind::Link(y)) => x == y,
        (Kind::File(x), Kind::File(y)) if x == y => same_bytes(a, b).unwrap_or(false),
        _ => false,
    }
}

fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder as GzDecoder;

    #[test]
    fn links_stay_links_and_paths_are_relative() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("weights.bin"), b"w").unwrap();
        std::fs::write(model.join("sub/extra.txt"), b"e").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", model.join("outside")).unwrap();
        std::os::unix::fs::symlink("/etc", model.join("etc-dir")).unwrap();
        let archive = dir.path().join("model.tar.gz");
        let packed = pack_merged(&[(String::new(), Beneath::folder(&model))], &archive).unwrap();
        assert_eq!(packed.bytes, 2);
        assert!(packed.conflicts.is_empty());

        let mut tar = tar::Archive::new(GzDecoder::new(File::open(&archive).unwrap()));
        let mut seen = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((path, entry.header().entry_type().is_symlink(), link));
        }
        assert_eq!(
            seen,
            [
                ("etc-dir".to_string(), true, Some("/etc".to_string())),
                ("outside".to_string(), true, Some("/etc/passwd".to_string())),
                ("sub".to_string(), false, None),
                ("sub/extra.txt".to_string(), false, None),
                ("weights.bin".to_string(), false, None),
            ]
        );
    }

    #[test]
    fn hosts_are_merged_and_differing_paths_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        for (d, shared, own, clash) in [(&one, "same", "a", "from 1"), (&two, "same", "b", "from 2")] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("shared.txt"), shared).unwrap();
            std::fs::write(d.join(format!("sub/{own}.txt")), own).unwrap();
            std::fs::write(d.join("clash.txt"), clash).unwrap();
        }
        std::fs::write(one.join("kind"), "a file on algo-1").unwrap();
        std::fs::create_dir_all(two.join("kind")).unwrap();
        std::fs::write(two.join("kind/inside.txt"), "hidden by algo-1's file").unwrap();
        let archive = dir.path().join("merged.tar.gz");
        let sources = [("algo-1".to_string(), one), ("algo-2".to_string(), two)];
        let sources = sources.map(|(host, folder)| (host, Beneath::folder(&folder)));
        let packed = pack_merged(&sources, &archive).unwrap();
        let conflicts: Vec<(&str, Vec<&str>)> =
            packed.conflicts.iter().map(|c| (c.path.as_str(), c.hosts.iter().map(String::as_str).collect())).collect();
        assert_eq!(conflicts, [("clash.txt", vec!["algo-1", "algo-2"]), ("kind", vec!["algo-1", "algo-2"])]);

        let mut tar = tar::Archive::new(GzDecoder::new(File::open(&archive).unwrap()));
        let mut seen = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            seen.push((path, text));
        }
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["clash.txt", "kind", "shared.txt", "sub", "sub/a.txt", "sub/b.txt"]);
        assert_eq!(seen[0].1, "from 1");
    }

    #[test]
    fn an_empty_or_missing_folder_gives_a_valid_empty_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("empty.tar.gz");
        assert_eq!(
            pack_merged(&[(String::new(), Beneath::folder(&dir.path().join("missing")))], &archive).unwrap(),
            Packed::default()
        );
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(&archive).unwrap()));
        assert_eq!(tar.entries().unwrap().count(), 0);
    }
}
