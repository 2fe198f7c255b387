//! What a job was given, beyond its request: the caps each host's container got
//! (`placement.json`, written when the job is admitted) and what each channel staged
//! (`staged.json`, written when staging ends); [`crate::state::StateDir`] names both files.
//! The console shows them; each is written as records are (beside, then renamed over), so a
//! reader sees all of it or none.

use crate::hosting::store::write_record;
use crate::job::Job;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

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

/// Writes `value` at `path` atomically; a failure is only warned about (the job runs on, its
/// page shows less).
pub(crate) fn write(path: &Path, value: &impl Serialize) {
    if let Err(e) = write_record(path, value, false) {
        tracing::warn!("cannot record the job's details: {e}");
    }
}

/// Reads `path`; None when it is not there (an older job's folder) or unreadable.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
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
        write(&dir.path().join("staged.json"), &staged);
        assert_eq!(read::<Vec<ChannelStaged>>(&dir.path().join("staged.json")), Some(staged));
        assert_eq!(read::<Vec<HostCaps>>(&dir.path().join("placement.json")), None);
    }
}
