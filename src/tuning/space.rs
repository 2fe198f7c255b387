//! The space a tuning job searches: its `ParameterRanges`, checked in AWS's words, and the
//! map between a point of the unit cube (where the strategies work) and the hyperparameter
//! values a training job is given (strings, as `HyperParameters` are).

use serde_json::Value;
use std::collections::BTreeMap;

/// `ScalingType`. `Auto` is resolved when the range is read (see [`Scale::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    Linear,
    Logarithmic,
    ReverseLogarithmic,
}

impl Scale {
    /// `Auto` searches on a log scale when the range is positive and spans two orders of
    /// magnitude or more (a learning rate from 1e-4 to 0.1, say), else linearly: what a
    /// person choosing the scale by hand would do.
    fn resolve(name: Option<&str>, min: f64, max: f64) -> Scale {
        match name {
            Some("Logarithmic") => Scale::Logarithmic,
            Some("ReverseLogarithmic") => Scale::ReverseLogarithmic,
            Some("Linear") => Scale::Linear,
            _ if min > 0.0 && max >= 100.0 * min => Scale::Logarithmic,
            _ => Scale::Linear,
        }
    }

    /// The position of `x` in [min, max] on this scale, 0 to 1.
    fn position_of(self, x: f64, min: f64, max: f64) -> f64 {
        let u = match self {
            Scale::Linear => (x - min) / (max - min),
            Scale::Logarithmic => (x.ln() - min.ln()) / (max.ln() - min.ln()),
            Scale::ReverseLogarithmic => ((1.0 - x).ln() - (1.0 - min).ln()) / ((1.0 - max).ln() - (1.0 - min).ln()),
        };
        if u.is_finite() { u.clamp(0.0, 1.0) } else { 0.0 }
    }

    /// The value at position `u` (0 to 1) of [min, max] on this scale.
    fn value_at(self, u: f64, min: f64, max: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        let x = match self {
            Scale::Linear => min + u * (max - min),
            Scale::Logarithmic => (min.ln() + u * (max.ln() - min.ln())).exp(),
            Scale::ReverseLogarithmic => 1.0 - ((1.0 - min).ln() + u * ((1.0 - max).ln() - (1.0 - min).ln())).exp(),
        };
        x.clamp(min, max)
    }
}

/// One tuned hyperparameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Range {
    Continuous { min: f64, max: f64, scale: Scale },
    Integer { min: i64, max: i64, scale: Scale },
    Categorical { values: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parameter {
    pub(crate) name: String,
    pub(crate) range: Range,
}

/// Every tuned hyperparameter, in the order the request lists them (integer ranges, then
/// continuous, then categorical, as `ParameterRanges` groups them).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Space {
    pub(crate) parameters: Vec<Parameter>,
}

/// Values for the tuned hyperparameters, as a training job gets them.
pub(crate) type Assignment = BTreeMap<String, String>;

/// AWS's limits: 30 tuned hyperparameters, 30 values per categorical range.
const MAX_PARAMETERS: usize = 30;
const MAX_CATEGORICAL_VALUES: usize = 30;

impl Space {
    /// Reads `ParameterRanges` (already checked against botocore's model), with the checks
    /// the service makes, in its words; `at` names where the ranges are in the request.
    pub(crate) fn parse(ranges: Option<&Value>, at: &str) -> Result<Space, Vec<String>> {
        let mut errors = Vec::new();
        let mut parameters = Vec::new();
        let list = |key: &str| ranges.and_then(|r| r.get(key)).and_then(Value::as_array).cloned().unwrap_or_default();
        let text = |r: &Value, key: &str| r.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        for r in list("IntegerParameterRanges") {
            let name = text(&r, "Name");
            let (lo, hi) = (text(&r, "MinValue"), text(&r, "MaxValue"));
            match (lo.trim().parse::<i64>(), hi.trim().parse::<i64>()) {
                (Ok(min), Ok(max)) if min <= max => {
                    let scale_name = r.get("ScalingType").and_then(Value::as_str);
                    match check_scale(&name, scale_name, min as f64, max as f64) {
                        Ok(()) => parameters.push(Parameter {
                            name,
                            range: Range::Integer { min, max, scale: Scale::resolve(scale_name, min as f64, max as f64) },
                        }),
                        Err(e) => errors.push(format!("{at}.IntegerParameterRanges: {e}")),
                    }
                }
                (Ok(_), Ok(_)) => errors.push(format!(
                    "{at}.IntegerParameterRanges: the MinValue '{lo}' of hyperparameter '{name}' must be less than or equal to its MaxValue '{hi}'"
                )),
                _ => errors.push(format!(
                    "{at}.IntegerParameterRanges: the MinValue '{lo}' and MaxValue '{hi}' of hyperparameter '{name}' must be integers"
                )),
            }
        }
        for r in list("ContinuousParameterRanges") {
            let name = text(&r, "Name");
            let (lo, hi) = (text(&r, "MinValue"), text(&r, "MaxValue"));
            match (lo.trim().parse::<f64>(), hi.trim().parse::<f64>()) {
                (Ok(min), Ok(max)) if min.is_finite() && max.is_finite() && min <= max => {
                    let scale_name = r.get("ScalingType").and_then(Value::as_str);
                    match check_scale(&name, scale_name, min, max) {
                        Ok(()) => parameters.push(Parameter {
                            name,
                            range: Range::Continuous { min, max, scale: Scale::resolve(scale_name, min, max) },
                        }),
                        Err(e) => errors.push(format!("{at}.ContinuousParameterRanges: {e}")),
                    }
                }
                (Ok(min), Ok(max)) if min.is_finite() && max.is_finite() => errors.push(format!(
                    "{at}.ContinuousParameterRanges: the MinValue '{lo}' of hyperparameter '{name}' must be less than or equal to its MaxValue '{hi}'"
                )),
                _ => errors.push(format!(
                    "{at}.ContinuousParameterRanges: the MinValue '{lo}' and MaxValue '{hi}' of hyperparameter '{name}' must be numbers"
                )),
            }
        }
        for r in list("CategoricalParameterRanges") {
            let name = text(&r, "Name");
            let values: Vec<String> = r
                .get("Values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            if values.len() > MAX_CATEGORICAL_VALUES {
                errors.push(format!(
                    "{at}.CategoricalParameterRanges: hyperparameter '{name}' has {} values; the maximum is {MAX_CATEGORICAL_VALUES}",
                    values.len()
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = values.iter().find(|v| !seen.insert(v.as_str())) {
                errors.push(format!(
                    "{at}.CategoricalParameterRanges: hyperparameter '{name}' lists the value '{dup}' twice"
                ));
            }
            parameters.push(Parameter { name, range: Range::Categorical { values } });
        }
        if let Some(auto) = ranges.and_then(|r| r.get("AutoParameters")).and_then(Value::as_array)
            && !auto.is_empty()
        {
            errors.push(format!(
                "{at}.AutoParameters: Autotune's parameter inference is not available here; give the ranges as IntegerParameterRanges, ContinuousParameterRanges or CategoricalParameterRanges"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for key in ["IntegerParameterRanges", "ContinuousParameterRanges", "CategoricalParameterRanges"] {
            for r in list(key) {
                let name = text(&r, "Name");
                if !seen.insert(name.clone()) {
                    errors.push(format!("{at}: the hyperparameter '{name}' has more than one range"));
                }
            }
        }
        if parameters.len() > MAX_PARAMETERS {
            errors
                .push(format!("{at}: {} hyperparameters are tuned; the maximum is {MAX_PARAMETERS}", parameters.len()));
        }
        if errors.is_empty() { Ok(Space { parameters }) } else { Err(errors) }
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.parameters.iter().map(|p| p.name.as_str())
    }

    /// The unit cube's dimensions: one per numeric range, one per categorical value
    /// (one-hot), so distances mean something for every kind.
    pub(crate) fn dimensions(&self) -> usize {
        self.parameters
            .iter()
            .map(|p| match &p.range {
                Range::Categorical { values } => values.len().max(1),
                _ => 1,
            })
            .sum()
    }

    /// The values at point `u` of the unit cube (`dimensions()` coordinates); categorical
    /// values are the one-hot block's largest coordinate.
    pub(crate) fn assignment(&self, u: &[f64]) -> Assignment {
        let mut out = Assignment::new();
        let mut at = 0;
        for p in &self.parameters {
            let value = match &p.range {
                Range::Continuous { min, max, scale } => format_float(scale.value_at(u[at], *min, *max)),
                Range::Integer { min, max, scale } => integer_at(u[at], *min, *max, *scale).to_string(),
                Range::Categorical { values } => {
                    let block = &u[at..at + values.len().max(1)];
                    let best = (0..block.len()).max_by(|&a, &b| block[a].total_cmp(&block[b])).unwrap_or(0);
                    values.get(best).cloned().unwrap_or_default()
                }
            };
            at += match &p.range {
                Range::Categorical { values } => values.len().max(1),
                _ => 1,
            };
            out.insert(p.name.clone(), value);
        }
        out
    }

    /// The unit-cube point of an assignment (integers and categories at their exact
    /// places): what a strategy learns from. None when a value is outside the space (a
    /// warm start's parent searched other ranges).
    pub(crate) fn point(&self, assignment: &Assignment) -> Option<Vec<f64>> {
        let mut u = Vec::with_capacity(self.dimensions());
        for p in &self.parameters {
            let value = assignment.get(&p.name)?;
            match &p.range {
                Range::Continuous { min, max, scale } => {
                    let x: f64 = value.parse().ok()?;
                    if x < *min || x > *max {
                        return None;
                    }
                    u.push(scale.position_of(x, *min, *max));
                }
                Range::Integer { min, max, scale } => {
                    let x: i64 = value.parse().ok()?;
                    if x < *min || x > *max {
                        return None;
                    }
                    u.push(integer_unit(x, *min, *max, *scale));
                }
                Range::Categorical { values } => {
                    let i = values.iter().position(|v| v == value)?;
                    u.extend((0..values.len()).map(|j| if i == j { 1.0 } else { 0.0 }));
                }
            }
        }
        Some(u)
    }

    /// Grid search's combinations: every integer value and every category, the first range
    /// varying slowest; None when a range is continuous (the service refuses those).
    pub(crate) fn grid(&self) -> Option<Vec<Assignment>> {
        let mut axes: Vec<(String, Vec<String>)> = Vec::new();
        for p in &self.parameters {
            let values = match &p.range {
                Range::Continuous { .. } => return None,
                Range::Integer { min, max, .. } => (*min..=*max).map(|v| v.to_string()).collect(),
                Range::Categorical { values } => values.clone(),
            };
            axes.push((p.name.clone(), values));
        }
        let mut out = vec![Assignment::new()];
        for (name, values) in &axes {
            let mut next = Vec::with_capacity(out.len() * values.len());
            for partial in &out {
                for v in values {
                    let mut a = partial.clone();
                    a.insert(name.clone(), v.clone());
                    next.push(a);
                }
            }
            out = next;
        }
        Some(out)
    }

    /// How many combinations a grid over this space has (saturating), without making them.
    pub(crate) fn grid_size(&self) -> Option<u64> {
        let mut n: u64 = 1;
        for p in &self.parameters {
            let k = match &p.range {
                Range::Continuous { .. } => return None,
                Range::Integer { min, max, .. } => max.abs_diff(*min).saturating_add(1),
                Range::Categorical { values } => values.len() as u64,
            };
            n = n.saturating_mul(k);
        }
        Some(n)
    }
}

/// The service's rules for scales, in the words of its API reference.
fn check_scale(name: &str, scale: Option<&str>, min: f64, max: f64) -> Result<(), String> {
    match scale {
        Some("Logarithmic") if min <= 0.0 => Err(format!(
            "Logarithmic scaling works only for ranges that have only values greater than 0: hyperparameter '{name}' has MinValue {min}"
        )),
        Some("ReverseLogarithmic") if !(0.0..1.0).contains(&min) || !(0.0..1.0).contains(&max) => Err(format!(
            "Reverse logarithmic scaling works only for ranges that are entirely within the range 0<=x<1.0: hyperparameter '{name}' has the range [{min}, {max}]"
        )),
        _ => Ok(()),
    }
}

/// An integer range on a scale: each integer owns the stretch of the unit interval around
/// it (on log scales, the log of [x − ½, x + ½] clipped to the range), so every value can
/// be drawn.
fn integer_at(u: f64, min: i64, max: i64, scale: Scale) -> i64 {
    if min == max {
        return min;
    }
    let (lo, hi) = widened(min, max, scale);
    let x = scale.value_at(u, lo, hi).round() as i64;
    x.clamp(min, max)
}

fn integer_unit(x: i64, min: i64, max: i64, scale: Scale) -> f64 {
    if min == max {
        return 0.5;
    }
    let (lo, hi) = widened(min, max, scale);
    scale.position_of(x as f64, lo, hi)
}

fn widened(min: i64, max: i64, scale: Scale) -> (f64, f64) {
    let (lo, hi) = (min as f64 - 0.4999, max as f64 + 0.4999);
    match scale {
        Scale::Linear => (lo, hi),
        // Stay positive (log) and below 1 (reverse log) while widening.
        Scale::Logarithmic => (lo.max(min as f64 * 0.5), hi),
        Scale::ReverseLogarithmic => (lo.max(0.0), hi.min(1.0 - 1e-9)),
    }
}

/// A continuous value as the training job gets it: the shortest text that reads back as
/// the same number.
fn format_float(x: f64) -> String {
    let text = format!("{x}");
    if text.contains('e') || text.contains('.') { text } else { format!("{text}.0") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn space(ranges: Value) -> Space {
        Space::parse(Some(&ranges), "ParameterRanges").expect("valid ranges")
    }

    #[test]
    fn scales_map_the_unit_interval_onto_the_range_and_back() {
        for (scale, min, max) in
            [(Scale::Linear, -2.0, 3.0), (Scale::Logarithmic, 1e-4, 1.0), (Scale::ReverseLogarithmic, 0.9, 0.9999)]
        {
            for u in [0.0, 0.25, 0.5, 1.0] {
                let x = scale.value_at(u, min, max);
                assert!((min..=max).contains(&x), "{scale:?} {u} -> {x}");
                assert!((scale.position_of(x, min, max) - u).abs() < 1e-9, "{scale:?} {u}");
            }
        }
        // Half-way on a log scale is the geometric mean; on a reverse log one, 1 − it of 1 − x.
        assert!((Scale::Logarithmic.value_at(0.5, 1e-4, 1.0) - 1e-2).abs() < 1e-12);
        assert!((Scale::ReverseLogarithmic.value_at(0.5, 0.9, 0.9999) - (1.0 - 10f64.powf(-2.5))).abs() < 1e-9);
    }

    #[test]
    fn auto_is_logarithmic_for_positive_ranges_over_two_orders_of_magnitude() {
        assert_eq!(Scale::resolve(Some("Auto"), 1e-4, 0.1), Scale::Logarithmic);
        assert_eq!(Scale::resolve(None, 0.1, 0.9), Scale::Linear);
        assert_eq!(Scale::resolve(Some("Auto"), 0.0, 100.0), Scale::Linear);
        assert_eq!(Scale::resolve(Some("Linear"), 1e-4, 0.1), Scale::Linear);
    }

    #[test]
    fn every_integer_of_a_range_can_be_drawn_on_every_scale() {
        for scale in [Scale::Linear, Scale::Logarithmic] {
            let drawn: std::collections::BTreeSet<i64> =
                (0..=1000).map(|i| integer_at(i as f64 / 1000.0, 1, 5, scale)).collect();
            assert_eq!(drawn, (1..=5).collect(), "{scale:?}");
            for x in 1..=5 {
                assert_eq!(integer_at(integer_unit(x, 1, 5, scale), 1, 5, scale), x, "{scale:?}");
            }
        }
    }

    #[test]
    fn ranges_are_checked_in_the_service_s_words() {
        let errors = Space::parse(
            Some(&json!({
                "ContinuousParameterRanges": [
                    {"Name": "lr", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"},
                    {"Name": "beta", "MinValue": "0.5", "MaxValue": "1", "ScalingType": "ReverseLogarithmic"},
                    {"Name": "x", "MinValue": "3", "MaxValue": "1"}
                ],
                "IntegerParameterRanges": [{"Name": "depth", "MinValue": "a", "MaxValue": "3"}],
                "CategoricalParameterRanges": [{"Name": "lr", "Values": ["a", "a"]}]
            })),
            "HyperParameterTuningJobConfig.ParameterRanges",
        )
        .unwrap_err();
        let all = errors.join("\n");
        for words in [
            "Logarithmic scaling works only for ranges that have only values greater than 0: hyperparameter 'lr'",
            "Reverse logarithmic scaling works only for ranges that are entirely within the range 0<=x<1.0: hyperparameter 'beta'",
            "the MinValue '3' of hyperparameter 'x' must be less than or equal to its MaxValue '1'",
            "the MinValue 'a' and MaxValue '3' of hyperparameter 'depth' must be integers",
            "hyperparameter 'lr' lists the value 'a' twice",
            "the hyperparameter 'lr' has more than one range",
        ] {
            assert!(all.contains(words), "{words}:\n{all}");
        }
    }

    #[test]
    fn assignments_and_points_round_trip_and_the_grid_is_every_combination() {
        let s = space(json!({
            "IntegerParameterRanges": [{"Name": "depth", "MinValue": "2", "MaxValue": "4"}],
            "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
            "CategoricalParameterRanges": [{"Name": "kind", "Values": ["a", "b"]}]
        }));
        assert_eq!(s.dimensions(), 4);
        let a = s.assignment(&[0.5, 0.5, 0.1, 0.9]);
        assert_eq!(a["depth"], "3");
        assert_eq!(a["kind"], "b");
        assert!((a["lr"].parse::<f64>().unwrap() - 0.01).abs() < 1e-12, "{a:?}");
        let u = s.point(&a).expect("inside the space");
        assert_eq!(s.assignment(&u), a);
        assert!(s.grid().is_none(), "a continuous range has no grid");

        let g = space(json!({
            "IntegerParameterRanges": [{"Name": "depth", "MinValue": "2", "MaxValue": "4"}],
            "CategoricalParameterRanges": [{"Name": "kind", "Values": ["a", "b"]}]
        }));
        let grid = g.grid().unwrap();
        assert_eq!(g.grid_size(), Some(6));
        let shown: Vec<String> = grid.iter().map(|a| format!("{}{}", a["depth"], a["kind"])).collect();
        assert_eq!(shown, ["2a", "2b", "3a", "3b", "4a", "4b"]);
        let mut outside = grid[0].clone();
        outside.insert("depth".into(), "9".into());
        assert_eq!(g.point(&outside), None);
    }
}
