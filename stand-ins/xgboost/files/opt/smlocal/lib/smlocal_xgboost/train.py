"""Algorithm mode: train on the `train` channel (and `validation` when given), print each
round's metrics as XGBoost does (`[N]<tab>train-rmse:...<tab>validation-rmse:...`), keep
checkpoints when the job has a CheckpointConfig (and resume from the newest), train across
every host with Rabit when there are several, and write `xgboost-model` from the first."""

import glob
import os
import re
import signal
import socket
import threading
import time
import traceback

import numpy as np
import scipy.sparse
import xgboost as xgb

from . import UserError, data, metrics, platform
from .hyperparameters import Hyperparameters

TRACKER_PORT = 9099
# Where the first host says its tracker is listening (the tracker's own port takes every
# connection as a worker's, so nothing may knock on it).
READY_PORT = 9098
CHECKPOINT = "xgboost-checkpoint"
KEEP_CHECKPOINTS = 5


def channel_path(name, config):
    mode = config.get("TrainingInputMode", "File")
    folder = os.path.join(platform.DATA, name)
    return folder + "_0" if mode == "Pipe" else folder


def load(name, config, csv_weights):
    kind = data.content_type(config.get("ContentType"))
    return data.read_channel(name, channel_path(name, config), kind, csv_weights), kind


def dmatrix(table, width):
    features = table.features
    if scipy.sparse.issparse(features):
        features = data.widen(features, width)
    elif features.shape[1] < width:
        raise UserError(
            f"The validation data has {features.shape[1]} feature columns and the training data {width}: "
            "both channels need the same columns (feature_names mismatch)")
    return xgb.DMatrix(features, label=table.labels, weight=table.weights, missing=np.nan)


class Printer(xgb.callback.TrainingCallback):
    """Each round's evaluation on one line, from the first host, as it happens. A resumed
    training counts its rounds from 0 in xgboost's callbacks; `done` (the rounds of the
    checkpoint) makes the numbers the model's own, as the algorithm prints them."""

    def __init__(self, rank, done=0):
        self.rank, self.done = rank, done

    def after_iteration(self, model, epoch, evals_log):
        if self.rank == 0 and evals_log:
            line = f"[{self.done + epoch}]"
            for channel, by_metric in evals_log.items():
                for metric, log in by_metric.items():
                    line += f"\t{channel}-{metric}:{log[-1]:.5f}"
            print(line, flush=True)
        return False


class Checkpoints(xgb.callback.TrainingCallback):
    """`xgboost-checkpoint.N` after round N in the checkpoint folder (the newest five kept)."""

    def __init__(self, folder, rank, done=0):
        self.folder, self.rank, self.done = folder, rank, done

    def after_iteration(self, model, epoch, evals_log):
        if self.rank != 0:
            return False
        os.makedirs(self.folder, exist_ok=True)
        # Named by the model's round, not the callback's count (which restarts on resume).
        path = os.path.join(self.folder, f"{CHECKPOINT}.{self.done + epoch}")
        model.save_model(path + ".tmp")
        os.replace(path + ".tmp", path)
        for old in sorted(saved(self.folder))[:-KEEP_CHECKPOINTS]:
            os.remove(os.path.join(self.folder, f"{CHECKPOINT}.{old}"))
        return False


class Termination(xgb.callback.TrainingCallback):
    """With save_model_on_termination, a SIGTERM ends training after the current round."""

    def __init__(self):
        self.asked = threading.Event()

    def after_iteration(self, model, epoch, evals_log):
        return self.asked.is_set()


def saved(folder):
    rounds = []
    for path in glob.glob(os.path.join(folder, f"{CHECKPOINT}.*")):
        m = re.fullmatch(re.escape(CHECKPOINT) + r"\.(\d+)", os.path.basename(path))
        if m:
            rounds.append(int(m.group(1)))
    return rounds


def announce_ready(ip):
    """Accepts (and closes) connections on READY_PORT from now on."""
    ready = socket.create_server((ip, READY_PORT))

    def serve():
        while True:
            connection, _ = ready.accept()
            connection.close()

    threading.Thread(target=serve, daemon=True).start()


def wait_until_ready(ip, seconds=600):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((ip, READY_PORT), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"the first host ({ip}) did not start the training tracker in {seconds} s")
            time.sleep(0.05)


def run():
    platform.banner("algorithm mode")
    raw = platform.config("hyperparameters.json", {}) or {}
    channels = platform.config("inputdataconfig.json", {}) or {}
    resources = platform.config("resourceconfig.json", {}) or {}
    checkpoint_config = platform.config("checkpointconfig.json")
    hp = Hyperparameters(raw)
    if "train" not in channels:
        named = ", ".join(sorted(channels)) or "none"
        raise UserError(f"Channel train is required (the request's channels: {named})")
    for name in channels:
        if name not in ("train", "validation"):
            raise UserError(f"Channel {name} is not one the algorithm reads; its channels are train and validation")
    train, kind = load("train", channels["train"], hp.csv_weights)
    hosts = resources.get("hosts", ["algo-1"])
    current = resources.get("current_host", hosts[0])
    rank = hosts.index(current) if current in hosts else 0
    if train is None:
        raise UserError(f"Channel train has no data on {current}"
                        + (" (with ShardedByS3Key every host needs at least one object)" if len(hosts) > 1 else ""))
    validation = None
    if "validation" in channels:
        validation, _ = load("validation", channels["validation"], hp.csv_weights)
    width = max(train.features.shape[1], validation.features.shape[1] if validation else 0)
    dtrain = dmatrix(train, width)
    evals = [(dtrain, "train")]
    if validation is not None:
        evals.append((dmatrix(validation, width), "validation"))
    print(f"Train matrix has {train.rows} rows and {width} columns"
          + (f"; validation matrix has {validation.rows} rows" if validation else ""), flush=True)

    start_model, done = None, 0
    if checkpoint_config is not None:
        folder = checkpoint_config.get("LocalPath") or "/opt/ml/checkpoints"
        rounds = saved(folder)
        if rounds:
            start_model = os.path.join(folder, f"{CHECKPOINT}.{max(rounds)}")
            done = max(rounds) + 1
            print(f"Resuming from checkpoint {start_model}: {done} of {hp.num_round} rounds done", flush=True)
    callbacks = [Printer(rank, done)]
    if checkpoint_config is not None:
        callbacks.append(Checkpoints(folder, rank, done))
    termination = Termination()
    if hp.values.get("save_model_on_termination"):
        signal.signal(signal.SIGTERM, lambda *_: termination.asked.set())
        callbacks.append(termination)

    def train_here():
        remaining = max(hp.num_round - done, 0)
        booster = start_model
        if remaining > 0:
            booster = xgb.train(
                hp.params, dtrain, num_boost_round=remaining, evals=evals,
                early_stopping_rounds=hp.early_stopping_rounds, verbose_eval=False,
                xgb_model=start_model, callbacks=callbacks,
                custom_metric=metrics.custom(hp.custom_metrics, hp.objective) if hp.custom_metrics else None)
        elif isinstance(booster, str):
            booster = xgb.Booster(model_file=booster)
        if rank == 0:
            os.makedirs(platform.MODEL, exist_ok=True)
            booster.save_model(os.path.join(platform.MODEL, "xgboost-model"))

    if len(hosts) == 1:
        train_here()
        return
    # Rabit: the first host runs the tracker; every host joins it with its index as rank.
    first_ip = socket.gethostbyname(hosts[0])
    tracker = None
    if rank == 0:
        tracker = xgb.tracker.RabitTracker(host_ip=first_ip, n_workers=len(hosts), port=TRACKER_PORT, sortby="task")
        tracker.start(len(hosts))
        announce_ready(first_ip)
    else:
        wait_until_ready(first_ip)
    print(f"Distributed training: {current} is worker {rank} of {len(hosts)} (tracker {hosts[0]}:{TRACKER_PORT})",
          flush=True)
    env = {"DMLC_TRACKER_URI": first_ip, "DMLC_TRACKER_PORT": TRACKER_PORT, "DMLC_TASK_ID": str(rank),
           "DMLC_WORKER_CONNECT_RETRY": 30}
    with xgb.collective.CommunicatorContext(**env):
        train_here()
    if tracker is not None:
        tracker.join()


def main():
    try:
        run()
    except UserError as e:
        platform.fail(str(e))
    except xgb.core.XGBoostError as e:
        # XGBoost's own checks (a label out of range for the objective, ...): its first line.
        first = str(e).strip().splitlines()[0] if str(e).strip() else "XGBoostError"
        platform.fail(re.sub(r"^\[[0-9:]+\] ", "", first))
    except Exception as e:
        traceback.print_exc()
        platform.fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
