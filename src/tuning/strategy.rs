//! How the next training job's hyperparameters are chosen: `Random`, `Grid`, `Bayesian` (a
//! Gaussian process with expected improvement) and `Hyperband` (random configurations,
//! stopped early by successive halving: [`Rungs`]). Strategies work in the unit cube of
//! [`Space`]; every choice comes from one seeded generator, so a `RandomSeed` repeats a run.

use super::space::{Assignment, Space};

/// SplitMix64: small, fast, and the same sequence for the same seed on every machine.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn point(&mut self, dimensions: usize) -> Vec<f64> {
        (0..dimensions).map(|_| self.unit()).collect()
    }
}

/// `Strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrategyKind {
    Random,
    Grid,
    Bayesian,
    Hyperband,
}

impl StrategyKind {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "Random" => StrategyKind::Random,
            "Grid" => StrategyKind::Grid,
            "Bayesian" => StrategyKind::Bayesian,
            "Hyperband" => StrategyKind::Hyperband,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Random => "Random",
            StrategyKind::Grid => "Grid",
            StrategyKind::Bayesian => "Bayesian",
            StrategyKind::Hyperband => "Hyperband",
        }
    }
}

/// A finished training job as a strategy learns from it: where it was, and its objective
/// turned into a value to minimise.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub(crate) point: Vec<f64>,
    pub(crate) loss: f64,
}

/// One search over one space.
#[derive(Debug)]
pub(crate) struct Searcher {
    kind: StrategyKind,
    rng: Rng,
    grid: Vec<Assignment>,
    next_in_grid: usize,
}

/// Attempts at drawing a configuration not tried before, before a repeat is accepted (a
/// small integer or categorical space may have been used up).
const FRESH_ATTEMPTS: usize = 64;

impl Searcher {
    pub(crate) fn new(kind: StrategyKind, space: &Space, seed: u64) -> Self {
        let grid = if kind == StrategyKind::Grid { space.grid().unwrap_or_default() } else { Vec::new() };
        Searcher { kind, rng: Rng::new(seed), grid, next_in_grid: 0 }
    }

    /// The next configuration, given what finished (`observed`) and what is running or
    /// queued (`pending`, as points), and every assignment tried so far; None when a grid
    /// is exhausted.
    pub(crate) fn propose(
        &mut self,
        space: &Space,
        observed: &[Observation],
        pending: &[Vec<f64>],
        tried: &[Assignment],
    ) -> Option<Assignment> {
        match self.kind {
            StrategyKind::Grid => {
                let next = self.grid.get(self.next_in_grid).cloned();
                self.next_in_grid += 1;
                next
            }
            StrategyKind::Random | StrategyKind::Hyperband => {
                Some(self.fresh(space, tried, |rng| rng.point(space.dimensions())))
            }
            StrategyKind::Bayesian => {
                let d = space.dimensions();
                // A few random configurations first: the model needs points to stand on.
                let initial = (d + 1).clamp(3, 10);
                if observed.len() < 2 || observed.len() + pending.len() < initial {
                    return Some(self.fresh(space, tried, |rng| rng.point(d)));
                }
                let u = bayesian_next(&mut self.rng, d, observed, pending);
                let a = space.assignment(&u);
                if tried.contains(&a) {
                    return Some(self.fresh(space, tried, |rng| rng.point(d)));
                }
                Some(a)
            }
        }
    }

    fn fresh(&mut self, space: &Space, tried: &[Assignment], mut draw: impl FnMut(&mut Rng) -> Vec<f64>) -> Assignment {
        let mut a = space.assignment(&draw(&mut self.rng));
        for _ in 0..FRESH_ATTEMPTS {
            if !tried.contains(&a) {
                break;
            }
            a = space.assignment(&draw(&mut self.rng));
        }
        a
    }
}

// ---- Bayesian optimisation: a Gaussian process over the unit cube, expected improvement ----

/// Matérn 5/2 correlation at distance `r` for length scale `l`.
fn matern52(r: f64, l: f64) -> f64 {
    let s = 5f64.sqrt() * r / l;
    (1.0 + s + s * s / 3.0) * (-s).exp()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// The lower-triangular L with L·Lᵀ = `a` (n×n, row-major); None when `a` is not positive
/// definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves L·x = b.
fn forward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            x[i] -= l[i * n + k] * x[k];
        }
        x[i] /= l[i * n + i];
    }
    x
}

/// Solves Lᵀ·x = b.
fn backward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in (0..n).rev() {
        for k in i + 1..n {
            x[i] -= l[k * n + i] * x[k];
        }
        x[i] /= l[i * n + i];
    }
    x
}

/// A Gaussian process fitted to standardised losses.
struct Process {
    points: Vec<Vec<f64>>,
    l: Vec<f64>,
    alpha: Vec<f64>,
    length: f64,
}

impl Process {
    /// Fits the process, choosing the length scale and the noise that make the data most
    /// likely (log marginal likelihood over a small grid: robust, and enough for tens to
    /// hundreds of points).
    fn fit(points: Vec<Vec<f64>>, y: &[f64], dimensions: usize) -> Option<Process> {
        let n = points.len();
        let scale = (dimensions as f64).sqrt();
        let mut best: Option<(f64, Process)> = None;
        for length in [0.05, 0.1, 0.2, 0.35, 0.6, 1.0].map(|l| l * scale) {
            for noise in [1e-6, 1e-4, 1e-2, 0.1] {
                let mut k = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..n {
                        k[i * n + j] = matern52(distance(&points[i], &points[j]), length);
                    }
                    k[i * n + i] += noise;
                }
                let Some(l) = cholesky(&k, n) else { continue };
                let alpha = backward(&l, n, &forward(&l, n, y));
                let fit: f64 = y.iter().zip(&alpha).map(|(a, b)| a * b).sum();
                let log_det: f64 = (0..n).map(|i| l[i * n + i].ln()).sum();
                let likelihood = -0.5 * fit - log_det;
                if best.as_ref().is_none_or(|(b, _)| likelihood > *b) {
                    best = Some((likelihood, Process { points: points.clone(), l, alpha, length }));
                }
            }
        }
        best.map(|(_, p)| p)
    }

    /// The posterior mean and standard deviation at `x`.
    fn predict(&self, x: &[f64]) -> (f64, f64) {
        let n = self.points.len();
        let k: Vec<f64> = self.points.iter().map(|p| matern52(distance(p, x), self.length)).collect();
        let mean = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = forward(&self.l, n, &k);
        let var = (1.0 - v.iter().map(|x| x * x).sum::<f64>()).max(1e-12);
        (mean, var.sqrt())
    }
}

/// erfc, to 1.2e-7 (Numerical Recipes' Chebyshev fit).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Expected improvement below `best` of a normal(mean, sd).
fn expected_improvement(mean: f64, sd: f64, best: f64) -> f64 {
    let gain = best - mean;
    let z = gain / sd;
    let cdf = 0.5 * erfc(-z / std::f64::consts::SQRT_2);
    let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    gain * cdf + sd * pdf
}

/// Candidates scored per proposal: random points, and points near the best so far.
const RANDOM_CANDIDATES: usize = 2000;
const LOCAL_CANDIDATES: usize = 500;

/// The point with the highest expected improvement. Running jobs count as if they had
/// already scored the best loss so far ("constant liar"), so parallel proposals spread out
/// instead of piling onto one spot.
fn bayesian_next(rng: &mut Rng, dimensions: usize, observed: &[Observation], pending: &[Vec<f64>]) -> Vec<f64> {
    // Objectives are often skewed (a diverging configuration scores 100× the good ones): the
    // process models the log of each loss's distance above the best, so it tells the good
    // configurations apart instead of spending its variance on the bad ones.
    let lowest = observed.iter().map(|o| o.loss).fold(f64::INFINITY, f64::min);
    let highest = observed.iter().map(|o| o.loss).fold(f64::NEG_INFINITY, f64::max);
    let offset = (0.01 * (highest - lowest)).max(1e-12);
    let losses: Vec<f64> = observed.iter().map(|o| (o.loss - lowest + offset).ln()).collect();
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    let sd = (losses.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / losses.len() as f64).sqrt().max(1e-12);
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let standard = |l: f64| (l - mean) / sd;
    let mut points: Vec<Vec<f64>> = observed.iter().map(|o| o.point.clone()).collect();
    let mut y: Vec<f64> = losses.iter().map(|&l| standard(l)).collect();
    for p in pending {
        points.push(p.clone());
        y.push(standard(best));
    }
    let Some(process) = Process::fit(points, &y, dimensions) else {
        return rng.point(dimensions);
    };
    let target = standard(best);
    let mut ranked: Vec<&Observation> = observed.iter().collect();
    ranked.sort_by(|a, b| a.loss.total_cmp(&b.loss));
    let mut choice = rng.point(dimensions);
    let mut choice_score = f64::NEG_INFINITY;
    for i in 0..RANDOM_CANDIDATES + LOCAL_CANDIDATES {
        let candidate = if i < RANDOM_CANDIDATES {
            rng.point(dimensions)
        } else {
            let around = &ranked[i % ranked.len().min(5)].point;
            let radius = if i % 2 == 0 { 0.05 } else { 0.15 };
            around.iter().map(|x| (x + radius * (2.0 * rng.unit() - 1.0)).clamp(0.0, 1.0)).collect()
        };
        let (m, s) = process.predict(&candidate);
        let score = expected_improvement(m, s, target);
        if score > choice_score {
            choice_score = score;
            choice = candidate;
        }
    }
    choice
}

// ---- Hyperband: successive halving over the jobs' intermediate objective values ----

/// Hyperband's rungs: a job that has reported its objective `r` times (its resource, such
/// as epochs) is judged at every rung `MinResource · 3^k` up to `MaxResource`, against the
/// jobs that reached the same rung before it; outside the best third it is stopped. At
/// `MaxResource` it is stopped whatever its value (it has had its whole budget). This is
/// the asynchronous form of successive halving, which never waits for a rung to fill.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rungs {
    pub(crate) min: u64,
    pub(crate) max: u64,
}

/// Hyperband's reduction factor: one job in three goes on past each rung.
const ETA: u64 = 3;

/// Why a running job should be stopped now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Continue,
    /// At rung `resource`, its loss is not among the best third of the jobs there.
    Halved {
        resource: u64,
        rank: usize,
        of: usize,
    },
    /// It has used `MaxResource`.
    Budget,
}

impl Rungs {
    pub(crate) fn levels(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut r = self.min.max(1);
        while r <= self.max {
            out.push(r);
            r = r.saturating_mul(ETA);
        }
        out
    }

    /// The verdict on a job whose losses so far are `mine`, given every other job's
    /// losses per step (`others`).
    pub(crate) fn judge(&self, mine: &[f64], others: &[&[f64]]) -> Verdict {
        let reached = mine.len() as u64;
        if reached >= self.max {
            return Verdict::Budget;
        }
        for resource in self.levels().into_iter().filter(|&r| r <= reached) {
            let at = resource as usize - 1;
            // Each job's best loss up to the rung: a job is judged by what it achieved.
            let best_to = |losses: &[f64]| losses[..=at].iter().copied().fold(f64::INFINITY, f64::min);
            let mut rung: Vec<f64> = others.iter().filter(|o| o.len() > at).map(|o| best_to(o)).collect();
            if rung.len() + 1 < ETA as usize {
                continue;
            }
            let me = best_to(mine);
            rung.push(me);
            rung.sort_by(f64::total_cmp);
            let kept = rung.len().div_ceil(ETA as usize);
            let rank = rung.iter().position(|&l| l >= me).unwrap_or(0);
            if rank >= kept {
                return Verdict::Halved { resource, rank: rank + 1, of: rung.len() };
            }
        }
        Verdict::Continue
    }
}

/// `TrainingJobEarlyStoppingType: Auto`, as AWS documents it: at step `t`, the job's
/// objective is compared with the median of the running averages (over their first `t`
/// steps) of the jobs that finished before it; worse, it is stopped. Judged once at least
/// [`MEDIAN_MIN_JOBS`] earlier jobs reached step `t`.
pub(crate) fn median_rule(mine: &[f64], finished: &[&[f64]]) -> Option<(usize, f64)> {
    let t = mine.len();
    if t == 0 {
        return None;
    }
    let mut averages: Vec<f64> =
        finished.iter().filter(|f| f.len() >= t).map(|f| f[..t].iter().sum::<f64>() / t as f64).collect();
    if averages.len() < MEDIAN_MIN_JOBS {
        return None;
    }
    averages.sort_by(f64::total_cmp);
    let median = if averages.len() % 2 == 1 {
        averages[averages.len() / 2]
    } else {
        (averages[averages.len() / 2 - 1] + averages[averages.len() / 2]) / 2.0
    };
    (mine[t - 1] > median).then_some((t, median))
}

/// Earlier jobs needed at a step before the median rule judges it.
pub(crate) const MEDIAN_MIN_JOBS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn space(ranges: serde_json::Value) -> Space {
        Space::parse(Some(&ranges), "ParameterRanges").unwrap()
    }

    /// Branin's function on [-5, 10] × [0, 15], minimum 0.397887 (three places).
    fn branin(a: &Assignment) -> f64 {
        let x: f64 = a["x"].parse().unwrap();
        let y: f64 = a["y"].parse().unwrap();
        let pi = std::f64::consts::PI;
        (y - 5.1 / (4.0 * pi * pi) * x * x + 5.0 / pi * x - 6.0).powi(2)
            + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos()
            + 10.0
    }

    fn branin_space() -> Space {
        space(json!({"ContinuousParameterRanges": [
            {"Name": "x", "MinValue": "-5", "MaxValue": "10"},
            {"Name": "y", "MinValue": "0", "MaxValue": "15"}
        ]}))
    }

    /// The best Branin value `kind` finds in `jobs` proposals, two at a time.
    fn search(kind: StrategyKind, seed: u64, jobs: usize) -> f64 {
        let s = branin_space();
        let mut searcher = Searcher::new(kind, &s, seed);
        let (mut observed, mut tried) = (Vec::new(), Vec::new());
        let mut pending: Vec<(Vec<f64>, f64)> = Vec::new();
        while tried.len() < jobs {
            let points: Vec<Vec<f64>> = pending.iter().map(|(p, _)| p.clone()).collect();
            let a = searcher.propose(&s, &observed, &points, &tried).unwrap();
            let loss = branin(&a);
            pending.push((s.point(&a).unwrap(), loss));
            tried.push(a);
            if pending.len() == 2 {
                let (point, loss) = pending.remove(0);
                observed.push(Observation { point, loss });
            }
        }
        tried.iter().map(branin).fold(f64::INFINITY, f64::min)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn bayesian_gets_closer_to_branin_s_minimum_than_random_in_the_same_jobs() {
        let seeds = 0..9;
        let gap = |kind| median(seeds.clone().map(|s| search(kind, s, 25) - 0.397887).collect());
        let (bayesian, random) = (gap(StrategyKind::Bayesian), gap(StrategyKind::Random));
        eprintln!(
            "Branin, 25 jobs 2 at a time, median gap to the optimum over 9 seeds: Bayesian {bayesian:.4}, Random {random:.4}"
        );
        assert!(bayesian < random / 3.0, "Bayesian {bayesian} against Random {random}");
        assert!(bayesian < 0.2, "Bayesian {bayesian}");
    }

    #[test]
    fn the_same_seed_proposes_the_same_jobs() {
        for kind in [StrategyKind::Random, StrategyKind::Bayesian] {
            assert_eq!(search(kind, 7, 12), search(kind, 7, 12), "{kind:?}");
            assert_ne!(search(kind, 7, 12), search(kind, 8, 12), "{kind:?}");
        }
    }

    #[test]
    fn grid_proposes_each_combination_once_then_nothing() {
        let s = space(json!({"CategoricalParameterRanges": [{"Name": "k", "Values": ["a", "b", "c"]}]}));
        let mut g = Searcher::new(StrategyKind::Grid, &s, 0);
        let got: Vec<String> = std::iter::from_fn(|| g.propose(&s, &[], &[], &[])).map(|a| a["k"].clone()).collect();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn random_avoids_repeats_while_there_are_untried_values() {
        let s = space(json!({"IntegerParameterRanges": [{"Name": "n", "MinValue": "1", "MaxValue": "4"}]}));
        let mut r = Searcher::new(StrategyKind::Random, &s, 3);
        let mut tried = Vec::new();
        for _ in 0..4 {
            let a = r.propose(&s, &[], &[], &tried).unwrap();
            tried.push(a);
        }
        let distinct: std::collections::BTreeSet<_> = tried.iter().map(|a| a["n"].clone()).collect();
        assert_eq!(distinct.len(), 4, "{tried:?}");
    }

    #[test]
    fn erfc_and_expected_improvement_are_right() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        // At the incumbent with unit spread, EI is φ(0).
        assert!((expected_improvement(0.0, 1.0, 0.0) - 0.398_942_28).abs() < 1e-6);
        assert!(expected_improvement(-1.0, 0.1, 0.0) > expected_improvement(1.0, 0.1, 0.0));
    }

    #[test]
    fn hyperband_halves_at_each_rung_and_stops_at_the_budget() {
        let rungs = Rungs { min: 1, max: 9 };
        assert_eq!(rungs.levels(), [1, 3, 9]);
        let (good, fair, bad) = ([1.0, 0.5, 0.4], [2.0, 1.5, 1.4], [3.0, 2.5, 2.4]);
        // Alone, or with one other, a job is never judged.
        assert_eq!(rungs.judge(&bad[..1], &[&good[..1]]), Verdict::Continue);
        assert_eq!(rungs.judge(&bad[..1], &[&good, &fair]), Verdict::Halved { resource: 1, rank: 3, of: 3 });
        assert_eq!(rungs.judge(&good[..1], &[&fair, &bad]), Verdict::Continue);
        assert_eq!(rungs.judge(&[0.1; 9], &[]), Verdict::Budget);
    }

    #[test]
    fn the_median_rule_stops_a_job_worse_than_the_median_running_average() {
        let earlier: [&[f64]; 3] = [&[1.0, 0.8, 0.6], &[1.2, 1.0, 0.9], &[2.0, 1.8, 1.6]];
        assert_eq!(median_rule(&[1.0, 0.9], &earlier[..2]), None, "two jobs are too few");
        // At step 2 the running averages are 0.9, 1.1, 1.9: median 1.1.
        assert_eq!(median_rule(&[1.5, 1.3], &earlier), Some((2, 1.1)));
        assert_eq!(median_rule(&[1.0, 1.0], &earlier), None);
    }
}
