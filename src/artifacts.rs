//! Turns a host's `/opt/ml/model` and `/opt/ml/output/data` into the tarballs SageMaker
//! uploads: paths relative to the folder, symlinks stored as symlinks and never followed
//! (a model folder may link anywhere on this machine), gzip-compressed.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::fs::File;
use std::io::{BufWriter, Write};
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
}

/// What went into an archive.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Packed {
    pub entries: usize,
    pub bytes: u64,
}

/// Writes `dir`'s contents to `archive` as a gzip-compressed tar.
pub fn pack(dir: &Path, archive: &Path) -> Result<Packed, ArtifactError> {
    let err = |path: &Path| {
        let (path, archive) = (path.to_path_buf(), archive.to_path_buf());
        move |source| ArtifactError::Io {
            path,
            archive,
            source,
        }
    };
    let file = File::create(archive).map_err(err(archive))?;
    let gz = GzEncoder::new(
        BufWriter::with_capacity(1 << 20, file),
        Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut packed = Packed::default();
    if dir.is_dir() {
        add_tree(&mut tar, dir, Path::new(""), &mut packed).map_err(err(dir))?;
    }
    let gz = tar.into_inner().map_err(err(dir))?;
    let mut out = gz.finish().map_err(err(archive))?;
    out.flush().map_err(err(archive))?;
    Ok(packed)
}

fn add_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    packed: &mut Packed,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    // Sorted, so the same tree always gives the same archive.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        // symlink_metadata: a link to a folder is archived as the link, not walked.
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            tar.append_dir(&name, &path)?;
            packed.entries += 1;
            add_tree(tar, &path, &name, packed)?;
        } else if meta.is_file() || meta.file_type().is_symlink() {
            tar.append_path_with_name(&path, &name)?;
            packed.entries += 1;
            if meta.is_file() {
                packed.bytes += meta.len();
            }
        } else {
            tracing::warn!(path = %path.display(), "skipping a special file (socket, device or FIFO) that a tarball cannot carry");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

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
        let packed = pack(&model, &archive).unwrap();
        assert_eq!(packed.bytes, 2);

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
    fn an_empty_or_missing_folder_gives_a_valid_empty_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("empty.tar.gz");
        assert_eq!(
            pack(&dir.path().join("missing"), &archive).unwrap(),
            Packed::default()
        );
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(&archive).unwrap()));
        assert_eq!(tar.entries().unwrap().count(), 0);
    }
}
