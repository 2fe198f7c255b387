//! Leftovers of runs that ended without cleaning up (a killed `smlocal train`, a server that
//! died mid-job): their labelled containers, volumes and networks are removed, and the
//! records their runner never finished are marked `Failed` with the reason, never lost.

use crate::docker::{Docker, DockerError, Owner};
use crate::state::record::{Failure, FailureKind};
use crate::state::{StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What [`clean_up`] removed and which jobs it marked `Failed`.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub containers: usize,
    pub volumes: usize,
    pub networks: usize,
    pub orphaned_jobs: Vec<String>,
}

/// The `FailureReason` of a job whose runner died.
pub(crate) const ORPHANED: &str = "InternalServerError: the smlocal process running this job (smlocal train or smlocal serve) ended before the job did; its containers were removed";

/// Removes the Docker objects of this state directory's jobs that no live process runs,
/// and of state directories that no longer exist (a `smlocal check` scratch folder, a
/// deleted SMLOCAL_HOME); never another live state directory's. Then marks every job whose
/// runner died `Failed`.
pub async fn clean_up(store: &StateDir, docker: &Docker) -> Result<Cleaned, CleanupError> {
    let home = store.root().display().to_string();
    let found = docker.labelled(None).await?;
    let leftover = |owner: &Owner| {
        if owner.home == home {
            !store.load(&owner.job).is_ok_and(|r| store.is_running(&r))
        } else {
            !owner.home.is_empty() && !std::path::Path::new(&owner.home).exists()
        }
    };
    let mut cleaned = Cleaned::default();
    for (id, owner) in found.containers.iter().filter(|(_, o)| leftover(o)) {
        docker.remove_container(id).await?;
        tracing::debug!("removed container {id} of {}", owner.job);
        cleaned.containers += 1;
    }
    for (volume, _) in found.volumes.iter().filter(|(_, o)| leftover(o)) {
        docker.remove_volume(volume).await?;
        cleaned.volumes += 1;
    }
    for (net, owner) in found.networks.iter().filter(|(_, o)| leftover(o)) {
        docker.remove_network(net).await?;
        tracing::debug!("removed network {net} of {}", owner.job);
        cleaned.networks += 1;
    }
    for mut r in store.list()? {
        if !r.training_job_status.is_terminal() && !store.is_running(&r) {
            r.fail(&Failure::new(FailureKind::Internal, ORPHANED));
            store.save(&r)?;
            store.release_reserve(&r.training_job_name);
            cleaned.orphaned_jobs.push(r.training_job_name);
        }
    }
    Ok(cleaned)
}
