//! Leftovers of runs that ended without cleaning up (a killed `smlocal train`, a server that
//! died mid-job): their labelled containers, volumes and networks are removed, and the
//! records their runner never finished are marked `Failed` with the reason, never lost.

use crate::docker::{Docker, DockerError, Owner};
use crate::state::record::{Failure, FailureKind};
use crate::state::{StateDir, StateError};
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What [`clean_up`] removed, what it could not, and which jobs it marked `Failed`.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub containers: usize,
    pub volumes: usize,
    pub networks: usize,
    pub orphaned_jobs: Vec<String>,
    /// Work folders of finished jobs (what `--keep` left) removed.
    pub work_folders: usize,
    /// Objects that could not be removed, each with why; the rest was cleaned regardless.
    pub left: Vec<String>,
    /// Running containers of state directories this process cannot see (another user's
    /// mount namespace, a dev container sharing the socket): perhaps alive, so left alone.
    pub spared: usize,
}

/// The `FailureReason` of a job whose runner died.
pub(crate) const ORPHANED: &str = "InternalServerError: the smlocal process running this job (smlocal train or smlocal serve) ended before the job did; its containers were removed";

/// Removes the Docker objects of this state directory's jobs that no live process runs,
/// the unfinished uploads of those jobs (through `storage`),
/// and the stopped ones of state directories that no longer exist (a `smlocal check`
/// scratch folder, a deleted SMLOCAL_HOME); never another live state directory's, and never
/// a running container whose state directory this process cannot see. Goes object by
/// object: one that cannot be removed is reported in [`Cleaned::left`], and the rest, and
/// the marking of every job whose runner died `Failed`, goes on.
pub async fn clean_up(store: &StateDir, docker: &Docker, storage: &Storage) -> Result<Cleaned, CleanupError> {
    let home = store.root().display().to_string();
    let found = docker.labelled(None).await?;
    let ours = |owner: &Owner| owner.home == home;
    let leftover = |owner: &Owner| {
        if ours(owner) {
            !store.load(&owner.job).is_ok_and(|r| store.is_running(&r))
        } else {
            !owner.home.is_empty() && !std::path::Path::new(&owner.home).exists()
        }
    };
    let mut cleaned = Cleaned::default();
    // This state directory's jobs whose containers were left (by `--keep`, or a dead run).
    let mut left_behind = std::collections::BTreeSet::new();
    for (id, owner) in found.containers.iter().filter(|(_, o)| leftover(o)) {
        if owner.alive && !ours(owner) {
            cleaned.spared += 1;
            continue;
        }
        match docker.remove_container(id).await {
            Ok(()) => {
                tracing::debug!("removed container {id} of {}", owner.job);
                cleaned.containers += 1;
                if ours(owner) {
                    left_behind.insert(owner.job.clone());
                }
            }
            Err(e) => cleaned.left.push(e.to_string()),
        }
    }
    for (volume, _) in found.volumes.iter().filter(|(_, o)| leftover(o)) {
        match docker.remove_volume(volume).await {
            Ok(()) => cleaned.volumes += 1,
            Err(e) => cleaned.left.push(e.to_string()),
        }
    }
    for (net, owner) in found.networks.iter().filter(|(_, o)| leftover(o)) {
        match docker.remove_network(net).await {
            Ok(()) => {
                tracing::debug!("removed network {net} of {}", owner.job);
                cleaned.networks += 1;
            }
            Err(e) => cleaned.left.push(e.to_string()),
        }
    }
    // Endpoint containers whose endpoint has no record any more (deleted while its
    // containers were being removed, or a state directory restored without them). Those of
    // live endpoints are left running: an endpoint outlives the process that deployed it.
    let hosting = crate::hosting::store::HostingStore::new(store.root());
    for (id, endpoint) in docker.containers_labelled(crate::hosting::ENDPOINT_LABEL, &home).await? {
        let known = hosting
            .load::<crate::hosting::store::EndpointRecord>(crate::hosting::store::Kind::Endpoint, &endpoint)
            .is_ok_and(|r| r.is_some());
        if known {
            continue;
        }
        match docker.remove_container(&id).await {
            Ok(()) => cleaned.containers += 1,
            Err(e) => cleaned.left.push(e.to_string()),
        }
    }
    for mut r in store.list()? {
        // What `--keep` left (the hosts' folders of a finished job) goes with the job's
        // containers. The folders of a run that died, or that smlocal's own failure kept,
        // stay for the user: they may hold a model that never reached the output path.
        let work = store.work_dir(&r.training_job_name);
        if r.training_job_status.is_terminal() && left_behind.contains(&r.training_job_name) && work.exists() {
            match std::fs::remove_dir_all(&work) {
                Ok(()) => cleaned.work_folders += 1,
                Err(e) => cleaned.left.push(format!("{}: {e}", work.display())),
            }
        }
        if !r.training_job_status.is_terminal() && !store.is_running(&r) {
            // An upload the dead process had begun: no half-written archive stays in the
            // output, and no unfinished multipart upload stays billed.
            match storage.discard_partials(&r.model_artifacts.s3_model_artifacts).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("{}: removed {n} half-written upload(s)", r.training_job_name),
                Err(e) => cleaned.left.push(format!("{}: unfinished uploads: {e}", r.training_job_name)),
            }
            r.fail(&Failure::new(FailureKind::Internal, ORPHANED));
            store.save(&r)?;
            store.release_reserve(&r.training_job_name);
            cleaned.orphaned_jobs.push(r.training_job_name);
        }
    }
    Ok(cleaned)
}
