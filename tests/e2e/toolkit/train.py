"""A user's scikit-learn script, as the SageMaker SDK's SKLearn estimator runs it through the
training toolkit: data from SM_CHANNEL_TRAIN, the model to SM_MODEL_DIR, a metric line as
XGBoost prints them (tab-separated), and what the toolkit told it about the machine."""
import glob
import json
import os

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression


def main():
    if os.environ.get("SM_HP_FAIL"):
        raise ValueError("asked to fail by the fail hyperparameter")
    files = sorted(glob.glob(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "*.csv")))
    data = pd.concat([pd.read_csv(f, header=None) for f in files])
    model = LinearRegression().fit(data[[0]], data[1])
    rmse = float(np.sqrt(np.mean((model.predict(data[[0]]) - data[1]) ** 2)))
    print(f"[0]\ttrain-rmse:{rmse:.4f}\tslope:{model.coef_[0]:.4f}")
    seen = {
        "num_cpus": int(os.environ["SM_NUM_CPUS"]),
        "os_cpus": os.cpu_count(),
        "hosts": json.loads(os.environ["SM_HOSTS"]),
        "current_host": os.environ["SM_CURRENT_HOST"],
        "rows": len(data),
    }
    print("seen: " + json.dumps(seen, sort_keys=True))
    joblib.dump(model, os.path.join(os.environ["SM_MODEL_DIR"], "model.joblib"))
    checkpoints()
    tensorboard(rmse)


def checkpoints():
    """Resumes as the XGBoost and scikit-learn containers do: from checkpointconfig.json."""
    config = "/opt/ml/input/config/checkpointconfig.json"
    if not os.path.exists(config):
        return
    local = json.load(open(config))["LocalPath"]
    state = os.path.join(local, "rounds.txt")
    rounds = int(open(state).read()) if os.path.exists(state) else 0
    print(f"resumed after {rounds} rounds" if rounds else "no checkpoint: starting fresh")
    with open(state, "w") as f:
        f.write(str(rounds + 1))


def tensorboard(rmse):
    config = "/opt/ml/input/config/tensorboardoutputconfig.json"
    if not os.path.exists(config):
        return
    local = json.load(open(config))["LocalPath"]
    with open(os.path.join(local, "events.out.tfevents.smlocal"), "w") as f:
        f.write(f"rmse {rmse}\n")


if __name__ == "__main__":
    main()
