//! Which image a request's `TrainingImage` (or a model's `Image`) runs as. An image on this
//! machine runs as named. One in AWS's registry form that is not here (SageMaker's own
//! algorithms and frameworks: nothing can be pulled) runs as the local image the map names
//! for its `repository:tag`: smlocal's stand-ins, then the user's entries from
//! `$SMLOCAL_HOME/images.json` and `SMLOCAL_IMAGE_MAP`. `mod.rs` the map and the choice,
//! `ecr.rs` the registry form, `stand_ins.rs` the stand-ins and their build.

mod ecr;
mod stand_ins;

use crate::docker::{Docker, DockerError};
use crate::spec::MetricDefinition;
pub(crate) use ecr::EcrImage;
use std::path::{Path, PathBuf};

/// The variable that adds map entries: `repository:tag=image`, comma-separated.
pub const MAP_VARIABLE: &str = "SMLOCAL_IMAGE_MAP";
/// The map's file in the state directory: a JSON object of `"repository:tag": "image"`.
pub const MAP_FILE: &str = "images.json";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image '{requested}' is not on this machine and smlocal cannot pull it (there may be no registry); it maps to the local stand-in '{image}', which is not built yet: run `smlocal images build {build}` once"
    )]
    StandInMissing { requested: String, image: String, build: &'static str },
    #[error(
        "image '{requested}' is not on this machine and smlocal cannot pull it (there may be no registry); the image map sends {key} to '{image}' ({source_name}), which is not on this machine either: build or load it, or change the entry"
    )]
    MappedMissing { requested: String, key: String, image: String, source_name: String },
    #[error(
        "image '{requested}' is not on this machine and smlocal cannot pull it (there may be no registry), and no local image is mapped to {key}. Build or `docker load` it under that name, or map it to a local image: SMLOCAL_IMAGE_MAP='{key}=my/image:tag' or an entry in {file}. `smlocal images` lists the map"
    )]
    Unmapped { requested: String, key: String, file: String },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("{}: {reason}. It holds a JSON object of \"repository:tag\": \"local image\" entries", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{MAP_VARIABLE} entry '{entry}' is not repository:tag=image (e.g. sagemaker-xgboost:1.7-1=my/xgboost:1.7)")]
    BadVariable { entry: String },
    #[error("there is no stand-in called '{name}'; smlocal builds: {known}")]
    UnknownStandIn { name: String, known: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build of {image} failed ({status}); its output above says why")]
    BuildFailed { image: String, status: std::process::ExitStatus },
}

impl ImageError {
    /// Whether the request (or the user's map) can fix it, as opposed to smlocal's trouble.
    pub(crate) fn is_validation(&self) -> bool {
        !matches!(self, ImageError::Docker(e) if !matches!(e, DockerError::ImageMissing(_)))
    }
}

/// Where a map entry came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntrySource {
    StandIn,
    File(PathBuf),
    Variable,
}

impl std::fmt::Display for EntrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntrySource::StandIn => write!(f, "smlocal's stand-in"),
            EntrySource::File(path) => write!(f, "{}", path.display()),
            EntrySource::Variable => write!(f, "{MAP_VARIABLE}"),
        }
    }
}

/// One line of the map: an AWS `repository:tag` (`repository:*` for every tag), or a whole
/// image reference, and the local image it runs as.
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub key: String,
    pub image: String,
    pub source: EntrySource,
    /// The stand-in's `smlocal images build` name, for the stand-ins' own entries.
    pub build: Option<&'static str>,
}

/// The image map: the stand-ins' entries, then the file's, then the variable's; a later
/// entry for the same key replaces an earlier one.
#[derive(Debug, Clone)]
pub struct ImageMap {
    entries: Vec<MapEntry>,
    file: PathBuf,
}

impl ImageMap {
    /// The map as `home`'s file and the environment make it now.
    pub fn load(home: &Path) -> Result<ImageMap, ImageError> {
        let variable = std::env::var(MAP_VARIABLE).ok();
        ImageMap::from_parts(home, variable.as_deref())
    }

    fn from_parts(home: &Path, variable: Option<&str>) -> Result<ImageMap, ImageError> {
        let file = home.join(MAP_FILE);
        let mut map = ImageMap { entries: Vec::new(), file: file.clone() };
        for s in stand_ins::STAND_INS {
            map.add(MapEntry {
                key: s.stands_for(),
                image: s.image.to_string(),
                source: EntrySource::StandIn,
                build: Some(s.name),
            });
        }
        match std::fs::read(&file) {
            Ok(bytes) => {
                let bad = |reason: String| ImageError::BadFile { path: file.clone(), reason };
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
                let object = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
                for (key, image) in object {
                    let image = image
                        .as_str()
                        .filter(|s| !s.trim().is_empty())
                        .ok_or_else(|| bad(format!("the entry for '{key}' is not an image name")))?;
                    map.add(MapEntry {
                        key: key.clone(),
                        image: image.to_string(),
                        source: EntrySource::File(file.clone()),
                        build: None,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ImageError::Io { path: file, source }),
        }
        for entry in variable.unwrap_or_default().split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, image) = entry
                .split_once('=')
                .filter(|(k, i)| !k.trim().is_empty() && !i.trim().is_empty())
                .ok_or_else(|| ImageError::BadVariable { entry: entry.to_string() })?;
            map.add(MapEntry {
                key: key.trim().to_string(),
                image: image.trim().to_string(),
                source: EntrySource::Variable,
                build: None,
            });
        }
        Ok(map)
    }

    fn add(&mut self, entry: MapEntry) {
        self.entries.retain(|e| e.key != entry.key);
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[MapEntry] {
        &self.entries
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The entry for `requested`: its whole reference, else (for AWS's registry form) its
    /// `repository:tag`, else `repository:*`.
    pub(crate) fn lookup(&self, requested: &str) -> Option<&MapEntry> {
        let find = |key: &str| self.entries.iter().find(|e| e.key == key);
        if let Some(entry) = find(requested) {
            return Some(entry);
        }
        let ecr = EcrImage::parse(requested)?;
        find(&ecr.short()).or_else(|| find(&format!("{}:*", ecr.repository)))
    }
}

/// What a request's image runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The local image the containers start from.
    pub(crate) image: String,
    /// When that is not the requested image: the map entry's key and where it came from.
    pub(crate) via: Option<(String, String)>,
}

/// The image to run for `requested`: itself when it is on this machine, else its map entry's
/// image; the error says what to build, load or map.
pub(crate) async fn resolve(docker: &Docker, home: &Path, requested: &str) -> Result<Resolved, ImageError> {
    match docker.image_id(requested).await {
        Ok(_) => return Ok(Resolved { image: requested.to_string(), via: None }),
        Err(DockerError::ImageMissing(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let map = ImageMap::load(home)?;
    let Some(entry) = map.lookup(requested) else {
        return Err(match EcrImage::parse(requested) {
            Some(ecr) => ImageError::Unmapped {
                requested: requested.to_string(),
                key: ecr.short(),
                file: map.file().display().to_string(),
            },
            None => DockerError::ImageMissing(requested.to_string()).into(),
        });
    };
    match docker.image_id(&entry.image).await {
        Ok(_) => {
            if let Some(build) = entry.build
                && stand_in_outdated(docker, build).await.unwrap_or(false)
            {
                tracing::warn!(
                    "{} was built from other sources than this smlocal's stand-in; `smlocal images build {build}` rebuilds it",
                    entry.image
                );
            }
            Ok(Resolved { image: entry.image.clone(), via: Some((entry.key.clone(), entry.source.to_string())) })
        }
        Err(DockerError::ImageMissing(_)) => Err(match entry.build {
            Some(build) => {
                ImageError::StandInMissing { requested: requested.to_string(), image: entry.image.clone(), build }
            }
            None => ImageError::MappedMissing {
                requested: requested.to_string(),
                key: entry.key.clone(),
                image: entry.image.clone(),
                source_name: entry.source.to_string(),
            },
        }),
        Err(e) => Err(e.into()),
    }
}

/// The size of `image` when it is on this machine.
pub async fn present(docker: &Docker, image: &str) -> Result<Option<u64>, ImageError> {
    match docker.image_info(image).await {
        Ok(info) => Ok(Some(info.size_bytes)),
        Err(DockerError::ImageMissing(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the stand-in called `name` is on this machine but was built from other sources
/// than this smlocal's (an older version's, or edited since).
pub async fn stand_in_outdated(docker: &Docker, name: &str) -> Result<bool, ImageError> {
    let stand_in = stand_ins::by_name(name)?;
    match docker.image_info(stand_in.image).await {
        Ok(info) => Ok(info.labels.get(stand_ins::DIGEST_LABEL) != Some(&stand_in.digest())),
        Err(DockerError::ImageMissing(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The metrics SageMaker fills in for one of its built-in algorithms when a request names
/// none (XGBoost: `train:<metric>` and `validation:<metric>` for each metric it prints).
pub(crate) fn builtin_metric_definitions(requested: &str) -> Option<Vec<MetricDefinition>> {
    let ecr = EcrImage::parse(requested)?;
    let stand_in = stand_ins::STAND_INS.iter().find(|s| s.algorithm && s.repository == ecr.repository)?;
    (stand_in.name == "xgboost").then(|| {
        ["train", "validation"]
            .iter()
            .flat_map(|channel| {
                XGBOOST_METRICS.iter().map(move |metric| MetricDefinition {
                    name: format!("{channel}:{metric}"),
                    regex: format!(
                        r".*\[[0-9]+\].*#011{channel}-{metric}:([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?).*"
                    ),
                })
            })
            .collect()
    })
}

/// What SageMaker's XGBoost prints and a tuner may optimise (its documentation's list).
const XGBOOST_METRICS: &[&str] = &[
    "accuracy",
    "auc",
    "aucpr",
    "balanced_accuracy",
    "error",
    "f1",
    "f1_binary",
    "f1_macro",
    "gamma-deviance",
    "gamma-nloglik",
    "logloss",
    "mae",
    "map",
    "mape",
    "merror",
    "mlogloss",
    "mse",
    "ndcg",
    "poisson-nloglik",
    "precision",
    "precision_macro",
    "precision_micro",
    "r2",
    "recall",
    "recall_macro",
    "recall_micro",
    "rmse",
    "rmsle",
    "tweedie-nloglik",
];

/// Builds the stand-in called `name` (`xgboost`, `sklearn`), its output on this terminal;
/// wheels are kept in `home`'s `wheels/` for the next build. Returns the image built.
pub fn build_stand_in(name: &str, home: &Path) -> Result<String, ImageError> {
    let stand_in = stand_ins::by_name(name)?;
    let dir = tempfile::tempdir().map_err(|source| ImageError::Io { path: std::env::temp_dir(), source })?;
    let script = stand_in.write_context(dir.path())?;
    let wheels = home.join("wheels");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .args([stand_in.name, stand_in.image, &stand_in.stands_for(), &stand_in.digest()])
        .env("WHEELS", &wheels)
        .status()
        .map_err(|source| ImageError::Io { path: script.clone(), source })?;
    if !status.success() {
        return Err(ImageError::BuildFailed { image: stand_in.image.to_string(), status });
    }
    Ok(stand_in.image.to_string())
}

/// The names `smlocal images build` takes.
pub fn stand_in_names() -> Vec<&'static str> {
    stand_ins::STAND_INS.iter().map(|s| s.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_stand_ins_then_the_file_then_the_variable_and_keys_by_repository_and_tag() {
        let home = tempfile::tempdir().unwrap();
        let map = ImageMap::from_parts(home.path(), None).unwrap();
        let xgb = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1";
        assert_eq!(map.lookup(xgb).unwrap().image, "smlocal/sagemaker-xgboost:1.7-1");
        assert_eq!(map.lookup(xgb).unwrap().build, Some("xgboost"));
        // Another region's account, the same image.
        assert!(map.lookup("246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-xgboost:1.7-1").is_some());
        assert!(map.lookup("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:0.90-2").is_none());
        assert!(map.lookup("smlocal/sagemaker-xgboost:1.7-1").is_none(), "local names are never mapped");

        std::fs::write(
            home.path().join(MAP_FILE),
            r#"{"sagemaker-xgboost:*": "mine/xgb:any", "sagemaker-xgboost:1.7-1": "mine/xgb:1.7"}"#,
        )
        .unwrap();
        let map =
            ImageMap::from_parts(home.path(), Some("sagemaker-xgboost:1.7-1=env/xgb:1.7, other:1=env/o:1")).unwrap();
        let entry = map.lookup(xgb).unwrap();
        assert_eq!((entry.image.as_str(), &entry.source), ("env/xgb:1.7", &EntrySource::Variable));
        assert_eq!(
            map.lookup("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.5-1").unwrap().image,
            "mine/xgb:any"
        );
        assert_eq!(map.entries().iter().filter(|e| e.key == "sagemaker-xgboost:1.7-1").count(), 1);

        let err = ImageMap::from_parts(home.path(), Some("nonsense")).unwrap_err().to_string();
        assert!(err.contains("'nonsense'") && err.contains("repository:tag=image"), "{err}");
        std::fs::write(home.path().join(MAP_FILE), r#"{"a:1": 3}"#).unwrap();
        let err = ImageMap::from_parts(home.path(), None).unwrap_err().to_string();
        assert!(err.contains("images.json") && err.contains("'a:1'"), "{err}");
    }

    #[test]
    fn xgboost_gets_sagemaker_s_metric_definitions_and_other_images_none() {
        let defs = builtin_metric_definitions("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1")
            .expect("xgboost is a built-in algorithm");
        let rmse = defs.iter().find(|d| d.name == "validation:rmse").unwrap();
        let re = regex::Regex::new(&rmse.regex).unwrap();
        let line = "[3]#011train-rmse:0.52100#011validation-rmse:0.61234";
        assert_eq!(&re.captures(line).unwrap()[1], "0.61234");
        assert!(defs.iter().any(|d| d.name == "train:rmse"));
        assert!(
            builtin_metric_definitions(
                "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
            )
            .is_none()
        );
        assert!(builtin_metric_definitions("smlocal/probe:latest").is_none());
    }
}
