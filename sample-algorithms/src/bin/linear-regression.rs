//! A real SageMaker training algorithm: linear regression by gradient descent on CSV data.
//!
//! It follows the training contract the way a production container does:
//! - hyperparameters from `/opt/ml/input/config/hyperparameters.json` (all values strings),
//! - data from the `train` channel (and `validation` when present), every `*.csv` file,
//!   the target in `target_column` (default 0), no header,
//! - the model in `/opt/ml/model/model.json`, a summary in `/opt/ml/output/data/`,
//! - one metric line per epoch (`epoch=N train_mse=X`) for `MetricDefinitions`,
//! - on bad input, a reason in `/opt/ml/output/failure` and a non-zero exit,
//! - on SIGTERM, the model trained so far is saved and the process exits 0.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

fn ml_root() -> PathBuf {
    // The override exists only so the algorithm can be tried outside a container.
    PathBuf::from(std::env::var("SM_ML_ROOT").unwrap_or_else(|_| "/opt/ml".to_string()))
}

struct Params {
    epochs: u32,
    learning_rate: f64,
    target_column: usize,
}

fn parse_params(raw: &serde_json::Map<String, serde_json::Value>) -> Result<Params, String> {
    fn get<T: std::str::FromStr>(
        raw: &serde_json::Map<String, serde_json::Value>,
        name: &str,
        default: T,
        valid: &str,
    ) -> Result<T, String> {
        match raw.get(name) {
            None => Ok(default),
            Some(serde_json::Value::String(s)) => s.trim().parse().map_err(|_| {
                format!("ClientError: hyperparameter {name}='{s}' is not valid; expected {valid}")
            }),
            Some(other) => Err(format!(
                "ClientError: hyperparameter {name} is {other}, but SageMaker passes every value as a string"
            )),
        }
    }
    let p = Params {
        epochs: get(raw, "epochs", 100, "a whole number of epochs, 1 or more")?,
        learning_rate: get(raw, "learning_rate", 0.05, "a positive number such as 0.05")?,
        target_column: get(raw, "target_column", 0, "a column index, 0 or more")?,
    };
    if p.epochs == 0 {
        return Err(
            "ClientError: hyperparameter epochs='0' is not valid; expected 1 or more".into(),
        );
    }
    if !(p.learning_rate > 0.0 && p.learning_rate.is_finite()) {
        return Err(format!(
            "ClientError: hyperparameter learning_rate='{}' is not valid; expected a positive number such as 0.05",
            p.learning_rate
        ));
    }
    Ok(p)
}

/// Rows of features and targets from every CSV file of a channel, in name order.
fn load_channel(dir: &Path, target_column: usize) -> Result<(Vec<Vec<f64>>, Vec<f64>), String> {
    let mut files = Vec::new();
    collect_csv(dir, &mut files)
        .map_err(|e| format!("ClientError: cannot read channel {}: {e}", dir.display()))?;
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "ClientError: no .csv files in channel folder {}",
            dir.display()
        ));
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for file in &files {
        let text = fs::read_to_string(file)
            .map_err(|e| format!("ClientError: cannot read {}: {e}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Result<Vec<f64>, _> =
                line.split(',').map(|c| c.trim().parse::<f64>()).collect();
            let mut cells = cells.map_err(|_| {
                format!(
                    "ClientError: {}:{} is not a row of numbers: '{line}'",
                    file.display(),
                    n + 1
                )
            })?;
            if target_column >= cells.len() {
                return Err(format!(
                    "ClientError: target_column={target_column} but {}:{} has {} columns",
                    file.display(),
                    n + 1,
                    cells.len()
                ));
            }
            ys.push(cells.remove(target_column));
            xs.push(cells);
        }
    }
    let width = xs.first().map(Vec::len).unwrap_or(0);
    if xs.iter().any(|r| r.len() != width) {
        return Err(format!(
            "ClientError: rows in {} have different numbers of columns",
            dir.display()
        ));
    }
    Ok((xs, ys))
}

fn collect_csv(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_csv(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "csv") {
            out.push(path);
        }
    }
    Ok(())
}

fn mse(w: &[f64], b: f64, xs: &[Vec<f64>], ys: &[f64]) -> f64 {
    let n = xs.len().max(1) as f64;
    xs.iter()
        .zip(ys)
        .map(|(x, y)| {
            let e = predict(w, b, x) - y;
            e * e
        })
        .sum::<f64>()
        / n
}

fn predict(w: &[f64], b: f64, x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + b
}

fn fail(root: &Path, reason: &str) -> ! {
    eprintln!("{reason}");
    let _ = fs::create_dir_all(root.join("output"));
    let _ = fs::write(root.join("output/failure"), reason);
    std::process::exit(1);
}

fn main() {
    let root = ml_root();
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode != "train" {
        fail(
            &root,
            &format!(
                "ClientError: this image only trains; it was started with '{mode}' instead of 'train'"
            ),
        );
    }
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }

    let hp_path = root.join("input/config/hyperparameters.json");
    let raw: serde_json::Map<String, serde_json::Value> = match fs::read_to_string(&hp_path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            fail(
                &root,
                &format!(
                    "ClientError: {} is not a JSON object: {e}",
                    hp_path.display()
                ),
            )
        }),
        Err(_) => serde_json::Map::new(),
    };
    let params = parse_params(&raw).unwrap_or_else(|reason| fail(&root, &reason));

    let resource: serde_json::Value =
        fs::read_to_string(root.join("input/config/resourceconfig.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let host = resource["current_host"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    println!(
        "linear-regression on {host}: epochs={} learning_rate={} target_column={}",
        params.epochs, params.learning_rate, params.target_column
    );

    let data = root.join("input/data");
    let (xs, ys) =
        load_channel(&data.join("train"), params.target_column).unwrap_or_else(|r| fail(&root, &r));
    let validation = data.join("validation").is_dir().then(|| {
        load_channel(&data.join("validation"), params.target_column)
            .unwrap_or_else(|r| fail(&root, &r))
    });
    println!(
        "loaded {} training rows with {} features",
        xs.len(),
        xs[0].len()
    );

    let width = xs[0].len();
    let (mut w, mut b) = (vec![0.0; width], 0.0);
    let n = xs.len() as f64;
    let mut epochs_done = 0;
    for epoch in 1..=params.epochs {
        if TERMINATED.load(Ordering::SeqCst) {
            println!("SIGTERM received after {epochs_done} epochs; saving the model so far");
            break;
        }
        let (mut gw, mut gb) = (vec![0.0; width], 0.0);
        for (x, y) in xs.iter().zip(&ys) {
            let e = predict(&w, b, x) - y;
            for (g, xi) in gw.iter_mut().zip(x) {
                *g += e * xi;
            }
            gb += e;
        }
        for (wi, g) in w.iter_mut().zip(&gw) {
            *wi -= params.learning_rate * 2.0 * g / n;
        }
        b -= params.learning_rate * 2.0 * gb / n;
        let train_mse = mse(&w, b, &xs, &ys);
        if !train_mse.is_finite() {
            fail(
                &root,
                &format!(
                    "AlgorithmError: training diverged at epoch {epoch} (train_mse is {train_mse}); lower learning_rate (now {})",
                    params.learning_rate
                ),
            );
        }
        match &validation {
            Some((vx, vy)) => println!(
                "epoch={epoch} train_mse={train_mse:.6} validation_mse={:.6}",
                mse(&w, b, vx, vy)
            ),
            None => println!("epoch={epoch} train_mse={train_mse:.6}"),
        }
        epochs_done = epoch;
    }

    let model = serde_json::json!({
        "algorithm": "linear-regression",
        "weights": w,
        "bias": b,
        "epochs": epochs_done,
        "target_column": params.target_column,
        "trained_on": host,
    });
    let written = fs::create_dir_all(root.join("model"))
        .and_then(|_| fs::write(root.join("model/model.json"), format!("{model:#}\n")))
        .and_then(|_| fs::create_dir_all(root.join("output/data")))
        .and_then(|_| {
            let mut f = fs::File::create(root.join("output/data/summary.txt"))?;
            writeln!(f, "rows={} features={width} epochs={epochs_done}", xs.len())?;
            writeln!(f, "final_train_mse={:.6}", mse(&w, b, &xs, &ys))
        });
    if let Err(e) = written {
        fail(
            &root,
            &format!("AlgorithmError: cannot write the model: {e}"),
        );
    }
    println!(
        "model written to {}",
        root.join("model/model.json").display()
    );
}
