//! An endpoint's logs as CloudWatch keeps them: group `/aws/sagemaker/Endpoints/<name>`,
//! one stream per instance, `<variant>/<instance-id>`. Containers run detached (they outlive
//! the process that deployed them), so their output is taken from the engine when someone
//! reads it and before a container is removed: appended to the stream's line index from
//! where the last copy ended (the engine's nanosecond time of the last line copied, kept
//! beside the log). The logs stay after the endpoint is deleted, as CloudWatch's do.

use super::Hosting;
use super::store::{EndpointRecord, Instance};
use crate::logs::index::Writer;
use std::path::Path;

pub(crate) const GROUP_PREFIX: &str = "/aws/sagemaker/Endpoints/";

/// Copies what the engine has of one instance's output that the stream lacks.
pub(crate) async fn sync(h: &Hosting, endpoint: &str, variant: &str, instance: &Instance) {
    let log = h.store.log_path(endpoint, variant, &instance.id);
    if let Err(e) = copy_new(h, &log, &instance.container).await {
        tracing::debug!(endpoint, "cannot copy the log of {}: {e}", instance.id);
    }
}

async fn copy_new(h: &Hosting, log: &Path, container: &str) -> std::io::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // One copier at a time per stream (serve and a CLI command may both read it).
    let lock_path = log.with_extension("lock");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    let lock = tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map(|()| lock)
    })
    .await
    .map_err(std::io::Error::other)??;
    let mark = log.with_extension("synced");
    let last: i128 = std::fs::read_to_string(&mark).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let since = (last / 1_000_000_000) as i64;
    let lines = h.docker.logged_lines(container, since, None).await.map_err(std::io::Error::other)?;
    let fresh: Vec<&(i128, String)> = lines.iter().filter(|(at, _)| *at > last).collect();
    if let Some((newest, _)) = fresh.last() {
        let mut writer = Writer::open(log)?;
        for (at, line) in &fresh {
            writer.write((*at / 1_000_000) as i64, line)?;
        }
        writer.flush()?;
        // Written beside and renamed: a crash never leaves a mark past what was copied.
        let tmp = mark.with_extension("synced.tmp");
        std::fs::write(&tmp, newest.to_string())?;
        std::fs::rename(&tmp, &mark)?;
    }
    drop(lock);
    Ok(())
}

/// Brings every live stream of an endpoint up to date.
pub(crate) async fn sync_endpoint(h: &Hosting, record: &EndpointRecord) {
    for variant in &record.variants {
        for instance in &variant.instances {
            sync(h, &record.name, &variant.name, instance).await;
        }
    }
}
