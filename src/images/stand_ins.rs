//! smlocal's stand-ins for SageMaker's own images: what each answers for, the files it is
//! built from (compiled into this binary, so `smlocal images build` works from any folder),
//! and the build itself (`stand-ins/build.sh`: a Debian root by mmdebstrap, pinned wheels
//! downloaded on the host).

use super::ImageError;
use std::path::Path;

/// One stand-in: the AWS repository and tag it answers for, and its local image.
#[derive(Debug)]
pub(crate) struct StandIn {
    /// What `smlocal images build NAME` calls it.
    pub(crate) name: &'static str,
    pub(crate) repository: &'static str,
    pub(crate) tag: &'static str,
    pub(crate) image: &'static str,
    /// A built-in algorithm (it fills MetricDefinitions in as SageMaker does), not only a
    /// framework image that runs the request's script.
    pub(crate) algorithm: bool,
    /// Its files, by path under `stand-ins/`.
    files: &'static [(&'static str, &'static str)],
}

macro_rules! stand_in_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../stand-ins/", $path)))),*]
    };
}

pub(crate) const STAND_INS: &[StandIn] = &[
    StandIn {
        name: "xgboost",
        repository: "sagemaker-xgboost",
        tag: "1.7-1",
        image: "smlocal/sagemaker-xgboost:1.7-1",
        algorithm: true,
        files: stand_in_files!(
            "xgboost/requirements.txt",
            "xgboost/files/opt/smlocal/bin/train",
            "xgboost/files/opt/smlocal/bin/serve",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/__init__.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/data.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/hyperparameters.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/metrics.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/platform.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/recordio.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/serve.py",
            "xgboost/files/opt/smlocal/lib/smlocal_xgboost/train.py",
        ),
    },
    StandIn {
        name: "sklearn",
        repository: "sagemaker-scikit-learn",
        tag: "1.2-1-cpu-py3",
        image: "smlocal/sagemaker-scikit-learn:1.2-1-cpu-py3",
        algorithm: false,
        files: stand_in_files!("sklearn/requirements.txt", "sklearn/files/opt/smlocal/bin/train"),
    },
];

const BUILD_SCRIPT: &str = include_str!("../../stand-ins/build.sh");

/// The label a built stand-in carries with [`StandIn::digest`].
pub(crate) const DIGEST_LABEL: &str = "smlocal.stand-in.digest";

pub(crate) fn by_name(name: &str) -> Result<&'static StandIn, ImageError> {
    STAND_INS.iter().find(|s| s.name == name).ok_or_else(|| ImageError::UnknownStandIn {
        name: name.to_string(),
        known: STAND_INS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    })
}

impl StandIn {
    /// `repository:tag`, as the image map keys it.
    pub(crate) fn stands_for(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// A digest of everything the image is built from (the build script, the requirements,
    /// the stand-in's files): an image whose label differs was built from other sources.
    pub(crate) fn digest(&self) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(BUILD_SCRIPT.as_bytes());
        for (path, text) in self.files {
            hash.update((path.len() as u64).to_le_bytes());
            hash.update(path.as_bytes());
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Writes the build's files into `dir` (scripts executable), ready for `bash build.sh`.
    pub(crate) fn write_context(&self, dir: &Path) -> Result<std::path::PathBuf, ImageError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { path, source }
        };
        let script = dir.join("build.sh");
        std::fs::write(&script, BUILD_SCRIPT).map_err(io(&script))?;
        for (relative, text) in self.files {
            let path = dir.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&path, text).map_err(io(&path))?;
            if relative.contains("/bin/") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io(&path))?;
            }
        }
        Ok(script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stand_in_has_its_own_stable_digest_of_its_sources() {
        let (xgboost, sklearn) = (by_name("xgboost").unwrap(), by_name("sklearn").unwrap());
        assert_eq!(xgboost.digest(), xgboost.digest());
        assert_ne!(xgboost.digest(), sklearn.digest());
        assert_eq!(xgboost.digest().len(), 16);
    }

    #[test]
    fn a_build_context_holds_every_file_with_its_programs_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let xgboost = by_name("xgboost").unwrap();
        let script = xgboost.write_context(dir.path()).unwrap();
        assert!(std::fs::read_to_string(script).unwrap().contains("mmdebstrap"));
        let train = dir.path().join("xgboost/files/opt/smlocal/bin/train");
        assert_eq!(std::fs::metadata(&train).unwrap().permissions().mode() & 0o111, 0o111);
        let requirements = std::fs::read_to_string(dir.path().join("xgboost/requirements.txt")).unwrap();
        assert!(requirements.lines().any(|l| l == "xgboost==1.7.6"));
        let err = by_name("tensorflow").unwrap_err().to_string();
        assert!(err.contains("tensorflow") && err.contains("xgboost, sklearn"), "{err}");
    }
}
