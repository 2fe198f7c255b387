//! A real SageMaker training algorithm: linear regression by gradient descent on CSV data.
//!
//! It follows the training contract the way a production container does:
//! - hyperparameters from `/opt/ml/input/config/hyperparameters.json` (all values strings):
//!   `epochs`, `learning_rate`, `l2` (a ridge penalty), `optimizer` (`gd` or `momentum`),
//!   `target_column`,
//! - data from the `train` channel (and `validation` when present), every `*.csv` file,
//!   the target in `target_column` (default 0), no header,
//! - the model in `/opt/ml/model/model.json`, a summary in `/opt/ml/output/data/summary-<host>.txt`,
//! - data-parallel on several hosts (from `resourceconfig.json`): each host computes the
//!   gradient of its own shard, algo-1 sums them over TCP (port 7777, peers by host name)
//!   and sends the sum back, every host applies the same update, and algo-1 writes the model,
//! - one metric line per epoch (`epoch=N train_mse=X`) for `MetricDefinitions`,
//! - on bad input, a reason in `/opt/ml/output/failure` and a non-zero exit,
//! - on SIGTERM, the model trained so far is saved and the process exits 0.
//!
//! Started with `serve` it follows the inference contract instead: it loads
//! `/opt/ml/model/model.json`, listens on port 8080, answers `GET /ping` and predicts for
//! `POST /invocations` (CSV rows of features, with or without the target column; or JSON
//! `{"instances": [[...], ...]}`), one prediction per line (`text/csv`) or as JSON
//! (`Accept: application/json`). A payload it cannot read is a 400 that says why. For batch
//! transform it asks for 2 requests in flight and 1 MB multi-record batches
//! (`GET /execution-parameters`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    /// Ridge penalty on the weights (not the bias).
    l2: f64,
    /// `gd` (plain gradient descent) or `momentum` (heavy ball, coefficient 0.9).
    optimizer: Optimizer,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Optimizer {
    Gd,
    Momentum,
}

impl std::str::FromStr for Optimizer {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "gd" => Ok(Optimizer::Gd),
            "momentum" => Ok(Optimizer::Momentum),
            _ => Err(()),
        }
    }
}

impl Optimizer {
    fn as_str(self) -> &'static str {
        match self {
            Optimizer::Gd => "gd",
            Optimizer::Momentum => "momentum",
        }
    }
}

/// The momentum optimizer's coefficient.
const MOMENTUM: f64 = 0.9;

fn parse_params(raw: &serde_json::Map<String, serde_json::Value>) -> Result<Params, String> {
    fn get<T: std::str::FromStr>(
        raw: &serde_json::Map<String, serde_json::Value>,
        name: &str,
        default: T,
        valid: &str,
    ) -> Result<T, String> {
        match raw.get(name) {
            None => Ok(default),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| format!("ClientError: hyperparameter {name}='{s}' is not valid; expected {valid}")),
            Some(other) => Err(format!(
                "ClientError: hyperparameter {name} is {other}, but SageMaker passes every value as a string"
            )),
        }
    }
    let p = Params {
        epochs: get(raw, "epochs", 100, "a whole number of epochs, 1 or more")?,
        learning_rate: get(raw, "learning_rate", 0.05, "a positive number such as 0.05")?,
        target_column: get(raw, "target_column", 0, "a column index, 0 or more")?,
        l2: get(raw, "l2", 0.0, "a number, 0 or more, such as 0.01")?,
        optimizer: get(raw, "optimizer", Optimizer::Gd, "gd or momentum")?,
    };
    if !(p.l2 >= 0.0 && p.l2.is_finite()) {
        return Err(format!(
            "ClientError: hyperparameter l2='{}' is not valid; expected a number, 0 or more, such as 0.01",
            p.l2
        ));
    }
    if p.epochs == 0 {
        return Err("ClientError: hyperparameter epochs='0' is not valid; expected 1 or more".into());
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
    collect_csv(dir, &mut files).map_err(|e| format!("ClientError: cannot read channel {}: {e}", dir.display()))?;
    files.sort();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for file in &files {
        let text = fs::read_to_string(file).map_err(|e| format!("ClientError: cannot read {}: {e}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Result<Vec<f64>, _> = line.split(',').map(|c| c.trim().parse::<f64>()).collect();
            let mut cells = cells
                .map_err(|_| format!("ClientError: {}:{} is not a row of numbers: '{line}'", file.display(), n + 1))?;
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
        return Err(format!("ClientError: rows in {} have different numbers of columns", dir.display()));
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

/// This host's links to the others: algo-1 (the first host) reduces, the rest send to it.
enum Peers {
    Alone,
    Leader(Vec<(BufReader<TcpStream>, TcpStream)>),
    Worker(BufReader<TcpStream>, TcpStream),
}

/// The port algo-1 listens on for its peers.
const PORT: u16 = 7777;

impl Peers {
    fn connect(hosts: &[String], me: &str) -> std::io::Result<Peers> {
        if hosts.len() <= 1 {
            return Ok(Peers::Alone);
        }
        if hosts[0] == me {
            let listener = TcpListener::bind(("0.0.0.0", PORT))?;
            let mut links = Vec::new();
            for _ in 1..hosts.len() {
                let (stream, _) = listener.accept()?;
                links.push((BufReader::new(stream.try_clone()?), stream));
            }
            println!("algo-1 reduces for {} peers on port {PORT}", links.len());
            return Ok(Peers::Leader(links));
        }
        // The leader may not be listening yet: the hosts start together, not in step.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect((hosts[0].as_str(), PORT)) {
                Ok(stream) => {
                    println!("{me} connected to {}", hosts[0]);
                    return Ok(Peers::Worker(BufReader::new(stream.try_clone()?), stream));
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn is_leader(&self) -> bool {
        !matches!(self, Peers::Worker(..))
    }

    /// Combines `local` element-wise with every host's vector; every host gets the result.
    /// `None` when a peer has gone (stopped or failed).
    fn all_reduce(&mut self, local: Vec<f64>, op: fn(f64, f64) -> f64) -> Option<Vec<f64>> {
        match self {
            Peers::Alone => Some(local),
            Peers::Leader(links) => {
                let mut total = local;
                for (reader, _) in links.iter_mut() {
                    let theirs = read_vector(reader)?;
                    total.resize(total.len().max(theirs.len()), 0.0);
                    for (t, v) in total.iter_mut().zip(theirs) {
                        *t = op(*t, v);
                    }
                }
                for (_, writer) in links.iter_mut() {
                    write_vector(writer, &total)?;
                }
                Some(total)
            }
            Peers::Worker(reader, writer) => {
                write_vector(writer, &local)?;
                read_vector(reader)
            }
        }
    }
}

fn write_vector(stream: &mut TcpStream, v: &[f64]) -> Option<()> {
    let line: Vec<String> = v.iter().map(f64::to_string).collect();
    stream.write_all(format!("{}\n", line.join(",")).as_bytes()).ok()
}

fn read_vector(reader: &mut BufReader<TcpStream>) -> Option<Vec<f64>> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    line.trim().split(',').map(|x| x.parse().ok()).collect()
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
    if mode == "serve" {
        serve(&root);
    }
    if mode != "train" {
        fail(
            &root,
            &format!(
                "ClientError: this image trains and serves; it was started with '{mode}' instead of 'train' or 'serve'"
            ),
        );
    }
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }

    let hp_path = root.join("input/config/hyperparameters.json");
    let raw: serde_json::Map<String, serde_json::Value> = match fs::read_to_string(&hp_path) {
        Ok(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| fail(&root, &format!("ClientError: {} is not a JSON object: {e}", hp_path.display()))),
        Err(_) => serde_json::Map::new(),
    };
    let params = parse_params(&raw).unwrap_or_else(|reason| fail(&root, &reason));

    let resource: serde_json::Value = fs::read_to_string(root.join("input/config/resourceconfig.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let host = resource["current_host"].as_str().unwrap_or("unknown").to_string();
    println!(
        "linear-regression on {host}: epochs={} learning_rate={} target_column={} l2={} optimizer={}",
        params.epochs,
        params.learning_rate,
        params.target_column,
        params.l2,
        params.optimizer.as_str()
    );

    let hosts: Vec<String> = resource["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let data = root.join("input/data");
    let (xs, ys) = load_channel(&data.join("train"), params.target_column).unwrap_or_else(|r| fail(&root, &r));
    if xs.is_empty() && hosts.len() <= 1 {
        fail(
            &root,
            &format!(
                "ClientError: no rows in the train channel ({}); give it .csv files",
                data.join("train").display()
            ),
        );
    }
    let validation = data
        .join("validation")
        .is_dir()
        .then(|| load_channel(&data.join("validation"), params.target_column).unwrap_or_else(|r| fail(&root, &r)));
    println!("loaded {} training rows with {} features", xs.len(), xs.first().map(Vec::len).unwrap_or(0));

    // Data-parallel: every host computes the gradient of its shard, the sums are shared
    // through algo-1 over TCP, and every host applies the same update.
    let mut peers = Peers::connect(&hosts, &host)
        .unwrap_or_else(|e| fail(&root, &format!("AlgorithmError: {host} cannot reach its peers: {e}")));
    let local_width = xs.first().map(Vec::len).unwrap_or(0) as f64;
    let width = match peers.all_reduce(vec![local_width], f64::max) {
        Some(v) => v[0] as usize,
        None => fail(&root, "AlgorithmError: a peer left before training began"),
    };
    let (mut w, mut b) = (vec![0.0; width], 0.0);
    // The momentum optimizer's velocities (weights, then bias).
    let mut velocity = vec![0.0; width + 1];
    let mut epochs_done = 0;
    let mut final_mse = f64::NAN;
    for epoch in 1..=params.epochs {
        if TERMINATED.load(Ordering::SeqCst) {
            println!("SIGTERM received after {epochs_done} epochs; saving the model so far");
            break;
        }
        // [gradient of w..., gradient of b, rows, squared error]
        let mut local = vec![0.0; width + 3];
        for (x, y) in xs.iter().zip(&ys) {
            let e = predict(&w, b, x) - y;
            for (g, xi) in local.iter_mut().zip(x) {
                *g += e * xi;
            }
            local[width] += e;
            local[width + 1] += 1.0;
            local[width + 2] += e * e;
        }
        let Some(total) = peers.all_reduce(local, |a, b| a + b) else {
            println!("a peer stopped after {epochs_done} epochs; saving the model so far");
            break;
        };
        let n = total[width + 1];
        if n == 0.0 {
            fail(&root, "ClientError: no host has rows in the train channel");
        }
        let train_mse = total[width + 2] / n;
        if !train_mse.is_finite() {
            fail(
                &root,
                &format!(
                    "AlgorithmError: training diverged at epoch {epoch} (train_mse is {train_mse}); lower learning_rate (now {})",
                    params.learning_rate
                ),
            );
        }
        let mut step: Vec<f64> = (0..width).map(|j| 2.0 * total[j] / n + 2.0 * params.l2 * w[j]).collect();
        step.push(2.0 * total[width] / n);
        if params.optimizer == Optimizer::Momentum {
            for (v, g) in velocity.iter_mut().zip(step.iter_mut()) {
                *v = MOMENTUM * *v + *g;
                *g = *v;
            }
        }
        for (wi, g) in w.iter_mut().zip(&step) {
            *wi -= params.learning_rate * g;
        }
        b -= params.learning_rate * step[width];
        match &validation {
            Some((vx, vy)) if !vx.is_empty() => {
                println!("epoch={epoch} train_mse={train_mse:.6} validation_mse={:.6}", mse(&w, b, vx, vy))
            }
            _ => println!("epoch={epoch} train_mse={train_mse:.6}"),
        }
        epochs_done = epoch;
        final_mse = train_mse;
    }

    let summary = root.join(format!("output/data/summary-{host}.txt"));
    let wrote_summary = fs::create_dir_all(root.join("output/data")).and_then(|_| {
        fs::write(
            &summary,
            format!("rows={} features={width} epochs={epochs_done}\nfinal_train_mse={final_mse:.6}\n", xs.len()),
        )
    });
    if let Err(e) = wrote_summary {
        fail(&root, &format!("AlgorithmError: cannot write {}: {e}", summary.display()));
    }
    if !peers.is_leader() {
        println!("{host} done; algo-1 writes the model");
        return;
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
        .and_then(|_| fs::write(root.join("model/model.json"), format!("{model:#}\n")));
    if let Err(e) = written {
        fail(&root, &format!("AlgorithmError: cannot write the model: {e}"));
    }
    println!("model written to {}", root.join("model/model.json").display());
}

/// A trained model as `model.json` holds it.
struct Model {
    weights: Vec<f64>,
    bias: f64,
    target_column: usize,
}

fn load_model(root: &Path) -> Result<Model, String> {
    let path = root.join("model/model.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let weights: Vec<f64> = v["weights"]
        .as_array()
        .ok_or_else(|| format!("{} has no weights", path.display()))?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok(Model {
        weights,
        bias: v["bias"].as_f64().unwrap_or(0.0),
        target_column: v["target_column"].as_u64().unwrap_or(0) as usize,
    })
}

/// The rows of a request: CSV lines or JSON instances; a row one longer than the model's
/// features still holds the target column, which is dropped.
fn rows(model: &Model, content_type: &str, body: &[u8]) -> Result<Vec<Vec<f64>>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the payload is not UTF-8 text".to_string())?;
    let raw: Vec<Vec<f64>> = if content_type.starts_with("application/json") {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("the payload is not JSON: {e}"))?;
        let instances = v.get("instances").unwrap_or(&v);
        instances
            .as_array()
            .ok_or("JSON payloads are {\"instances\": [[x1, x2, ...], ...]}")?
            .iter()
            .map(|row| {
                row.as_array()
                    .map(|r| r.iter().filter_map(serde_json::Value::as_f64).collect())
                    .ok_or_else(|| "each instance is a list of numbers".to_string())
            })
            .collect::<Result<_, _>>()?
    } else if content_type.is_empty() || content_type.starts_with("text/csv") {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                line.split(',')
                    .map(|c| {
                        c.trim().parse::<f64>().map_err(|_| format!("line {}: '{}' is not a number", i + 1, c.trim()))
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?
    } else {
        return Err(format!("unsupported content type '{content_type}'; send text/csv or application/json"));
    };
    let n = model.weights.len();
    raw.into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            if row.len() == n + 1 && model.target_column < row.len() {
                row.remove(model.target_column);
            }
            if row.len() == n {
                Ok(row)
            } else {
                Err(format!("row {} has {} values; the model takes {n} features", i + 1, row.len()))
            }
        })
        .collect()
}

fn serve(root: &Path) -> ! {
    use sample_algorithms::http::{self, Response};
    let model = load_model(root).unwrap_or_else(|e| {
        eprintln!("linear-regression serve: {e}");
        std::process::exit(1)
    });
    println!("linear-regression serving a model of {} features", model.weights.len());
    http::serve(8080, move |request| match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/ping") => Response::new(200, "text/plain", "ok\n"),
        // What batch transform uses when the request leaves these out.
        ("GET", "/execution-parameters") => Response::new(
            200,
            "application/json",
            r#"{"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1}"#,
        ),
        ("POST", "/invocations") => {
            let content_type = request.header("content-type").unwrap_or_default();
            match rows(&model, content_type, &request.body) {
                Ok(rows) => {
                    let predictions: Vec<f64> = rows.iter().map(|x| predict(&model.weights, model.bias, x)).collect();
                    if request.header("accept").is_some_and(|a| a.starts_with("application/json")) {
                        let body = serde_json::json!({"predictions": predictions});
                        Response::new(200, "application/json", body.to_string())
                    } else {
                        let body: String = predictions.iter().map(|p| format!("{p}\n")).collect();
                        Response::new(200, "text/csv", body)
                    }
                }
                Err(reason) => Response::new(400, "text/plain", format!("{reason}\n")),
            }
        }
        _ => Response::new(404, "text/plain", "not found\n"),
    })
}
