//! `AlgorithmSpecification.MetricDefinitions`: every regex runs over every log line of every
//! host; the first capture group (the whole match when there is none) is the value. Each
//! point is appended to the job's `metrics.jsonl` as it is seen, so the series survives a
//! crash and can be read while the job runs.

use crate::spec::MetricDefinition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One observation of a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub metric: String,
    pub host: String,
    /// Epoch seconds.
    pub timestamp: f64,
    pub value: f64,
}

pub(crate) struct Recorder {
    definitions: Vec<(String, regex::Regex)>,
    file: Option<std::fs::File>,
    last: BTreeMap<String, Point>,
    /// Definitions already warned about (they match the raw line only).
    warned: std::collections::BTreeSet<usize>,
}

impl Recorder {
    /// Compiles the definitions (already validated by [`crate::job`]); points go to `path`.
    pub(crate) fn new(definitions: &[MetricDefinition], path: &Path) -> Self {
        let definitions: Vec<(String, regex::Regex)> =
            definitions.iter().filter_map(|d| regex::Regex::new(&d.regex).ok().map(|r| (d.name.clone(), r))).collect();
        let file = if definitions.is_empty() {
            None
        } else {
            match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("cannot write metrics to {}: {e}", path.display());
                    None
                }
            }
        };
        Recorder { definitions, file, last: BTreeMap::new(), warned: Default::default() }
    }

    /// Runs every definition over `line` as CloudWatch shows it, tabs as `#011` (SageMaker
    /// matches there, so its documented regexes contain `#011`). A definition that matches
    /// only the raw line (one written with `\t`, say) is still recorded, with a warning
    /// once: on SageMaker it would find nothing.
    pub(crate) fn observe(&mut self, host: &str, line: &str, timestamp: f64) {
        let shown = crate::logs::cloudwatch_form(line);
        for (i, (name, re)) in self.definitions.iter().enumerate() {
            let caps = match re.captures(&shown) {
                Some(caps) => caps,
                None => match (shown != line).then(|| re.captures(line)).flatten() {
                    Some(caps) => {
                        if self.warned.insert(i) {
                            tracing::warn!(
                                "metric {name}: its regex matches the raw log line but not CloudWatch's form of it (tabs as #011), which is what SageMaker matches; on SageMaker it would record nothing"
                            );
                        }
                        caps
                    }
                    None => continue,
                },
            };
            let text = caps.get(1).or_else(|| caps.get(0)).map(|m| m.as_str()).unwrap_or("");
            let Ok(value) = text.trim().parse::<f64>() else {
                continue;
            };
            let point = Point { metric: name.clone(), host: host.into(), timestamp, value };
            if let Some(f) = self.file.as_mut()
                && let Ok(json) = serde_json::to_string(&point)
            {
                let _ = writeln!(f, "{json}");
            }
            self.last.insert(name.clone(), point);
        }
    }

    /// `FinalMetricDataList`: the last value of each metric.
    pub(crate) fn final_metrics(&self) -> Vec<Point> {
        self.last.values().cloned().collect()
    }
}

/// Reads back a job's series (lines that do not parse are skipped: a crash may cut one).
pub fn read(path: &Path) -> Vec<Point> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Per metric: last, min, max and how many points.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub metric: String,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

pub fn summarize(points: &[Point]) -> Vec<Summary> {
    let mut by: BTreeMap<&str, Summary> = BTreeMap::new();
    for p in points {
        let s = by.entry(&p.metric).or_insert(Summary {
            metric: p.metric.clone(),
            last: p.value,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            count: 0,
        });
        s.last = p.value;
        s.min = s.min.min(p.value);
        s.max = s.max.max(p.value);
        s.count += 1;
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> Vec<MetricDefinition> {
        vec![
            MetricDefinition { name: "train:mse".into(), regex: r"train_mse=([0-9.eE+-]+)".into() },
            MetricDefinition { name: "epoch".into(), regex: r"epoch=(\d+)".into() },
            MetricDefinition { name: "whole".into(), regex: r"\d+\.\d+%".into() },
        ]
    }

    #[test]
    fn the_first_group_is_the_value_and_the_last_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut r = Recorder::new(&defs(), &path);
        r.observe("algo-1", "epoch=1 train_mse=0.50", 10.0);
        r.observe("algo-2", "epoch=2 train_mse=0.25", 11.0);
        r.observe("algo-1", "nothing to see", 12.0);
        r.observe("algo-1", "train_mse=not-a-number", 13.0);
        let last = r.final_metrics();
        let names: Vec<(&str, f64)> = last.iter().map(|p| (p.metric.as_str(), p.value)).collect();
        assert_eq!(names, [("epoch", 2.0), ("train:mse", 0.25)]);
        let points = read(&path);
        assert_eq!(points.len(), 4);
        assert_eq!(points[0], Point { metric: "train:mse".into(), host: "algo-1".into(), timestamp: 10.0, value: 0.5 });
        let s = summarize(&points);
        assert_eq!(s[1], Summary { metric: "train:mse".into(), last: 0.25, min: 0.25, max: 0.5, count: 2 });
    }

    #[test]
    fn sagemakers_regexes_match_the_cloudwatch_form_and_raw_only_ones_still_count() {
        let dir = tempfile::tempdir().unwrap();
        let defs = vec![
            // The SageMaker SDK's own definition for XGBoost's validation metric.
            MetricDefinition {
                name: "validation:rmse".into(),
                regex: r".*\[[0-9]+\].*#011validation-rmse:([-+]?[0-9]*\.?[0-9]+)".into(),
            },
            MetricDefinition { name: "raw".into(), regex: r"\ttrain-rmse:([0-9.]+)".into() },
        ];
        let mut r = Recorder::new(&defs, &dir.path().join("metrics.jsonl"));
        r.observe("algo-1", "[3]\ttrain-rmse:0.75\tvalidation-rmse:0.5", 1.0);
        let last: Vec<(String, f64)> = r.final_metrics().into_iter().map(|p| (p.metric, p.value)).collect();
        assert_eq!(last, [("raw".to_string(), 0.75), ("validation:rmse".to_string(), 0.5)]);
        assert!(r.warned.contains(&1) && !r.warned.contains(&0));
    }

    #[test]
    fn without_a_group_the_whole_match_must_be_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::new(&defs()[2..], &dir.path().join("metrics.jsonl"));
        r.observe("algo-1", "progress 12.5%", 1.0);
        assert!(r.final_metrics().is_empty(), "'12.5%' is not a number");
    }
}
