//! After the hosts exit: their `/opt/ml/model` and `/opt/ml/output/data` folders become
//! `model.tar.gz` and `output.tar.gz` at `<S3OutputPath>/<job>/output/`. Each archive is
//! streamed — tar, gzip on every core, multipart upload — in one pass over the files and never
//! whole in memory. If an upload fails, the archive is written to the job's folder instead, so
//! nothing is lost, and the error says where.

pub(crate) mod gzip;
pub(crate) mod tar;

use self::tar::{ArtifactError, Kind, Packed};
use crate::job::Job;
use crate::stage::HostTree;
use crate::storage::{Storage, StorageError, Upload};
use crate::tree::{Beneath, TreeError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Chunks handed from the packing thread to the uploader.
const CHUNK: usize = 1 << 20;

/// Why one archive did not reach its destination.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Pack(#[from] ArtifactError),
    #[error(transparent)]
    Walk(#[from] TreeError),
    #[error("cannot create '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("packing stopped: {0}")]
    Stopped(String),
}

/// Why the archives did not all reach the output path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectError {
    /// A host left a link where a folder it hands over should be (`/opt/ml/model`, or
    /// `/opt/ml/output` above `output/data`): nothing was archived, nothing followed.
    #[error(
        "AlgorithmError: /opt/ml/{} on {host} is not a folder but a symbolic link (to '{}'); smlocal never follows links out of a container's folders, so nothing was archived. Write the files into the folder itself",
        .folder.display(), .target.display()
    )]
    LinkedFolder { host: String, folder: PathBuf, target: PathBuf },
    #[error(transparent)]
    Upload(#[from] UploadFailed),
}

/// An upload that failed, and where the archives are now: the failed one and every one
/// after it are written to the job's folder instead. The message is the job's
/// `FailureReason`.
#[derive(Debug, thiserror::Error)]
#[error("ClientError: uploading {uri} failed: {source}; {}", match .keep_error {
    None => format!("the artifacts are kept in {}", .kept.display()),
    Some(k) => format!("writing {} failed too ({k}); the files are still in the job's work folder", .archive.display()),
})]
pub(crate) struct UploadFailed {
    pub uri: String,
    #[source]
    pub source: ArchiveError,
    /// The folder the archives were written to instead.
    pub kept: PathBuf,
    /// The archive that could not be uploaded or kept.
    pub archive: PathBuf,
    /// Why keeping an archive failed too, if it did.
    pub keep_error: Option<ArchiveError>,
}

/// Packs and uploads both archives of the hosts' trees. Once an upload fails, that archive
/// and the ones after it are written to `keep_dir` instead, and the error says where.
pub(crate) async fn collect(
    storage: &Storage,
    job: &Job,
    trees: &[(String, HostTree)],
    keep_dir: &Path,
) -> Result<(), CollectError> {
    let model: fn(&HostTree) -> Beneath = HostTree::model;
    let output: fn(&HostTree) -> Beneath = HostTree::output_data;
    let archives = [
        ("model", model, "model.tar.gz", job.model_artifacts_uri()),
        ("output", output, "output.tar.gz", job.output_artifacts_uri()),
    ];
    // Checked before anything is packed: a linked folder fails the job as a whole.
    for (_, folder, _, _) in &archives {
        for (host, tree) in trees {
            let beneath = folder(tree);
            if let Some(TreeError::Link { path, target }) = beneath.link_in_place() {
                let linked = path.strip_prefix(tree.root()).map(Path::to_path_buf).unwrap_or(path);
                return Err(CollectError::LinkedFolder { host: host.clone(), folder: linked, target });
            }
        }
    }
    let mut failed: Option<UploadFailed> = None;
    for (what, folder, file, uri) in archives {
        let sources: Vec<(String, Beneath)> = trees.iter().map(|(host, tree)| (host.clone(), folder(tree))).collect();
        if let Some(failure) = failed.as_mut() {
            // The endpoint just failed: this archive is kept beside the other, not tried.
            let archive = keep_dir.join(file);
            if let Err(e) = keep(sources, keep_dir, &archive).await {
                failure.archive = archive;
                failure.keep_error.get_or_insert(e);
            }
            continue;
        }
        let sent = if what == "model" && !job.compress {
            files(storage, &sources, &uri).await
        } else {
            stream(storage, sources.clone(), &uri).await
        };
        let packed = match sent {
            Ok(packed) => packed,
            Err(source) => {
                let archive = keep_dir.join(file);
                let keep_error = keep(sources, keep_dir, &archive).await.err();
                failed = Some(UploadFailed { uri, source, kept: keep_dir.to_path_buf(), archive, keep_error });
                continue;
            }
        };
        for c in &packed.conflicts {
            tracing::warn!(
                "{what}: hosts {} wrote '{}' with different contents; {}'s version is in the archive",
                c.hosts.join(", "),
                c.path,
                c.hosts[0]
            );
        }
        tracing::debug!(entries = packed.entries, bytes = packed.bytes, "uploaded {uri}");
    }
    match failed {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// One archive, packed on a blocking thread while this task uploads what it produces.
pub async fn stream(storage: &Storage, sources: Vec<(String, Beneath)>, uri: &str) -> Result<Packed, ArchiveError> {
    let mut upload = Upload::start(storage, uri).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let name = PathBuf::from(uri);
    let packing = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter { tx, buffer: Vec::with_capacity(CHUNK) };
        let (packed, mut writer) = tar::write_merged(&sources, writer, &name)?;
        writer.send().map_err(|source| tar::ArtifactError::Io { path: name.clone(), archive: name, source })?;
        Ok::<Packed, ArtifactError>(packed)
    });
    let mut failed: Option<StorageError> = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = upload.write(&chunk).await {
            failed = Some(e);
            break;
        }
    }
    // Closing the channel stops the packer early when the upload failed.
    drop(rx);
    let packed = packing.await.map_err(|e| ArchiveError::Stopped(e.to_string()));
    match (packed, failed) {
        (Ok(Ok(packed)), None) => {
            upload.finish().await?;
            Ok(packed)
        }
        (_, Some(e)) => {
            upload.abort().await;
            Err(e.into())
        }
        (Ok(Err(e)), None) => {
            upload.abort().await;
            Err(e.into())
        }
        (Err(e), None) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// `CompressionType: NONE`: every file of the merged tree is uploaded on its own under `prefix`,
/// in parallel. Object storage has no symbolic links: links are left out, each named.
async fn files(storage: &Storage, sources: &[(String, Beneath)], prefix: &str) -> Result<Packed, ArchiveError> {
    use futures::StreamExt;
    // The walk reads every file of the hosts' folders: off the async workers.
    let walked = sources.to_vec();
    let (entries, conflicts) = tokio::task::spawn_blocking(move || tar::merge(&walked))
        .await
        .map_err(|e| ArchiveError::Stopped(e.to_string()))??;
    let mut packed = Packed { conflicts, ..Packed::default() };
    let mut uploads = Vec::new();
    for e in entries {
        match e.kind {
            Kind::File(len) => {
                packed.entries += 1;
                packed.bytes += len;
                uploads.push((e.source, format!("{prefix}{}", e.relative.display())));
            }
            Kind::Link(target) => tracing::warn!(
                "CompressionType NONE: the symbolic link {} -> {} is not uploaded (object storage has no links)",
                e.relative.display(),
                target.display()
            ),
            Kind::Dir => {}
        }
    }
    // Collected first so the stream is `Send` (see `stage::with_info`).
    // Fewer than staging's requests: each upload buffers a multipart part in memory.
    const UPLOADS_IN_FLIGHT: usize = 8;
    let uploads: Vec<_> = uploads.iter().map(|(src, uri)| storage.upload(src, uri)).collect();
    let results: Vec<Result<(), StorageError>> =
        futures::stream::iter(uploads).buffer_unordered(UPLOADS_IN_FLIGHT).collect().await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(packed)
}

/// The second pass, only when an upload failed: the archive on local disk.
async fn keep(sources: Vec<(String, Beneath)>, dir: &Path, archive: &Path) -> Result<(), ArchiveError> {
    std::fs::create_dir_all(dir).map_err(|source| ArchiveError::Io { path: dir.to_path_buf(), source })?;
    let archive = archive.to_path_buf();
    tokio::task::spawn_blocking(move || tar::pack_merged(&sources, &archive))
        .await
        .map_err(|e| ArchiveError::Stopped(e.to_string()))??;
    Ok(())
}

/// Hands bytes to the async uploader in chunks, waiting when it is behind.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
