//! A model's artifacts into the folder its containers mount as `/opt/ml/model`: a
//! `ModelDataUrl` (or a `ModelDataSource` with `CompressionType: Gzip`) is one `.tar.gz`,
//! unpacked; a `ModelDataSource` with `CompressionType: None` is a prefix (or one object)
//! copied as is. Always into the endpoint's own folder, never beside the archive: an entry
//! that is a link, or whose path is absolute or climbs with `..`, refuses the whole model.

use crate::stage::safe_relative;
use crate::storage::{Location, Storage, StorageError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelDataError {
    #[error("cannot fetch the model data {uri}: {source}")]
    Fetch {
        uri: String,
        #[source]
        source: StorageError,
    },
    #[error(
        "the model data {uri} is not a gzip-compressed tar archive ({reason}); ModelDataUrl must name a .tar.gz, or use ModelDataSource with CompressionType None for an uncompressed prefix"
    )]
    NotAnArchive { uri: String, reason: String },
    #[error("the model data {uri} holds '{entry}', {why}; smlocal unpacks only files and folders below /opt/ml/model")]
    Unsafe { uri: String, entry: String, why: &'static str },
    #[error("the model data prefix {uri} holds no objects")]
    Empty { uri: String },
    #[error("cannot write the model folder '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a container definition's artifacts come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ModelData {
    /// No artifacts: `/opt/ml/model` is empty.
    None,
    /// One `.tar.gz`, unpacked.
    Archive(String),
    /// Objects under a prefix (or one object), copied as they are.
    Uncompressed { uri: String, single_object: bool },
}

impl ModelData {
    /// From a `ContainerDefinition` as the API takes it.
    pub(crate) fn of(container: &serde_json::Value) -> ModelData {
        if let Some(url) = container.get("ModelDataUrl").and_then(|v| v.as_str()) {
            return ModelData::Archive(url.to_string());
        }
        let Some(source) = container.get("ModelDataSource").and_then(|s| s.get("S3DataSource")) else {
            return ModelData::None;
        };
        let uri = source.get("S3Uri").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        match source.get("CompressionType").and_then(|v| v.as_str()) {
            Some("Gzip") => ModelData::Archive(uri),
            _ => ModelData::Uncompressed {
                single_object: source.get("S3DataType").and_then(|v| v.as_str()) == Some("S3Object"),
                uri,
            },
        }
    }

    pub(crate) fn uri(&self) -> Option<&str> {
        match self {
            ModelData::None => None,
            ModelData::Archive(uri) | ModelData::Uncompressed { uri, .. } => Some(uri),
        }
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelDataError + '_ {
    move |source| ModelDataError::Io { path: path.to_path_buf(), source }
}

/// Fills `dest` (made here; must not exist) with the model's artifacts.
pub(crate) async fn fetch(storage: &Storage, data: &ModelData, dest: &Path) -> Result<(), ModelDataError> {
    std::fs::create_dir_all(dest).map_err(write_error(dest))?;
    match data {
        ModelData::None => Ok(()),
        ModelData::Archive(uri) => {
            let fetched = |source| ModelDataError::Fetch { uri: uri.clone(), source };
            // Beside the folder, not in it: the container never sees the archive.
            let archive = dest.with_extension("tar.gz");
            storage.download(uri, &archive).await.map_err(fetched)?;
            let (uri, archive_path, dest_path) = (uri.clone(), archive.clone(), dest.to_path_buf());
            let unpacked = tokio::task::spawn_blocking(move || unpack(&uri, &archive_path, &dest_path))
                .await
                .unwrap_or_else(|e| Err(write_error(dest)(std::io::Error::other(e))));
            let _ = std::fs::remove_file(&archive);
            unpacked
        }
        ModelData::Uncompressed { uri, single_object } => {
            let fetched = |source| ModelDataError::Fetch { uri: uri.clone(), source };
            let objects = storage.list(uri).await.map_err(fetched)?;
            if objects.is_empty() {
                return Err(ModelDataError::Empty { uri: uri.clone() });
            }
            let location = Location::parse(uri).map_err(fetched)?;
            let prefix = location.key().to_string();
            for object in objects {
                if object.key.ends_with('/') {
                    continue;
                }
                let relative = if *single_object {
                    object.key.rsplit('/').next().map(PathBuf::from)
                } else {
                    safe_relative(object.key.strip_prefix(&prefix).unwrap_or(&object.key).trim_start_matches('/'))
                };
                let Some(relative) = relative else {
                    return Err(ModelDataError::Unsafe {
                        uri: uri.clone(),
                        entry: object.key,
                        why: "a key that would be written outside the model folder",
                    });
                };
                let target = dest.join(relative);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(write_error(parent))?;
                }
                storage.download(&location.uri_of(&object.key), &target).await.map_err(fetched)?;
            }
            Ok(())
        }
    }
}

/// Unpacks a `.tar.gz`, files and folders only.
fn unpack(uri: &str, archive: &Path, dest: &Path) -> Result<(), ModelDataError> {
    let not_archive = |e: std::io::Error| ModelDataError::NotAnArchive { uri: uri.into(), reason: e.to_string() };
    let file = std::fs::File::open(archive).map_err(write_error(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    for entry in tar.entries().map_err(not_archive)? {
        let mut entry = entry.map_err(not_archive)?;
        let name = entry.path().map_err(not_archive)?.to_string_lossy().into_owned();
        let unsafe_entry = |why| ModelDataError::Unsafe { uri: uri.into(), entry: name.clone(), why };
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink => return Err(unsafe_entry("a symbolic link")),
            T::Link => return Err(unsafe_entry("a hard link")),
            // Long names and PAX headers are read by the tar crate itself.
            T::GNULongName | T::GNULongLink | T::XHeader | T::XGlobalHeader => continue,
            _ => return Err(unsafe_entry("neither a file nor a folder")),
        }
        let relative = name.trim_start_matches("./");
        if relative.is_empty() {
            continue;
        }
        let Some(relative) = safe_relative(relative).filter(|_| !name.starts_with('/')) else {
            return Err(unsafe_entry("a path outside the archive's folder"));
        };
        let target = dest.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        entry.unpack(&target).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => not_archive(e),
            _ => write_error(&target)(e),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("model.tar.gz")).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
        build(&mut builder);
        builder.into_inner().unwrap().finish().unwrap();
        dir
    }

    fn file(builder: &mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>, path: &str, body: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Written raw so a hostile name reaches the reader as it would from a real archive.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, body).unwrap();
    }

    #[test]
    fn files_and_folders_are_unpacked_below_the_folder() {
        let dir = archive(|b| {
            file(b, "./model.json", b"{}");
            file(b, "sub/weights.bin", b"123");
        });
        let dest = dir.path().join("out");
        unpack("s3://b/model.tar.gz", &dir.path().join("model.tar.gz"), &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("model.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(dest.join("sub/weights.bin")).unwrap(), b"123");
    }

    #[test]
    fn links_and_climbing_paths_refuse_the_model() {
        let dir = archive(|b| file(b, "../escape", b"x"));
        let err = unpack("u", &dir.path().join("model.tar.gz"), &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ModelDataError::Unsafe { ref entry, .. } if entry == "../escape"), "{err}");
        assert!(!dir.path().join("escape").exists());
        let dir = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            b.append_link(&mut header, "etc", "/etc").unwrap();
        });
        let err = unpack("u", &dir.path().join("model.tar.gz"), &dir.path().join("out")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_an_archive_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.tar.gz"), b"not gzip").unwrap();
        let err = unpack("s3://b/m", &dir.path().join("model.tar.gz"), &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ModelDataError::NotAnArchive { .. }), "{err}");
    }
}
