//! What a job was given, beyond its request: the caps each host's container got
//! (`placement.json`, written when the job is admitted) and what each channel staged
//! (`staged.json`, written when staging ends). The console shows them; each file is written
//! beside its place and renamed over, so a reader sees all of it or none.

use crate::job::Job;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

pub(crate) const PLACEMENT: &str = "placement.json";
pub(crate) const STAGED: &str = "staged.json";

/// The resources one host's container was capped at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostCaps {
    pub(crate) host: String,
    pub(crate) instance_type: String,
    /// The instance type's own size.
    pub(crate) vcpu: u32,
    pub(crate) instance_memory_bytes: u64,
    /// What Docker enforces.
    pub(crate) memory_bytes: u64,
    pub(crate) nano_cpus: i64,
    /// The cores it is pinned to (`0,1`), None for all of this machine's.
    pub(crate) cores: Option<String>,
}

/// The caps of every host of `job`.
pub(crate) fn placement(job: &Job) -> Vec<HostCaps> {
    job.hosts
        .iter()
        .map(|h| HostCaps {
            host: h.name.clone(),
            instance_type: h.instance.instance_type.clone(),
            vcpu: h.instance.vcpu,
            instance_memory_bytes: h.instance.memory_bytes,
            memory_bytes: h.limits.memory_bytes,
            nano_cpus: h.limits.nano_cpus,
            cores: h.cores(),
        })
        .collect()
}

/// What one channel put before one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChannelStaged {
    pub(crate) channel: String,
    /// None for a Pipe channel: its objects are streamed to the hosts each epoch, not staged.
    pub(crate) host: Option<String>,
    pub(crate) objects: u64,
    /// Bytes as listed (a Pipe channel's augmented-manifest lines count none).
    pub(crate) bytes: u64,
}

/// Writes `value` as `file` in the job folder `dir`, atomically.
pub(crate) fn write(dir: &Path, file: &str, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&text)?;
    tmp.persist(dir.join(file)).map_err(|e| e.error)?;
    Ok(())
}

/// Reads `file` of the job folder `dir`; None when it is not there (an older job's folder)
/// or unreadable.
pub(crate) fn read<T: DeserializeOwned>(dir: &Path, file: &str) -> Option<T> {
    let text = std::fs::read(dir.join(file)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_read_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let staged =
            vec![ChannelStaged { channel: "train".into(), host: Some("algo-1".into()), objects: 3, bytes: 42 }];
        write(dir.path(), STAGED, &staged).unwrap();
        assert_eq!(read::<Vec<ChannelStaged>>(dir.path(), STAGED), Some(staged));
        assert_eq!(read::<Vec<HostCaps>>(dir.path(), PLACEMENT), None);
    }
}
