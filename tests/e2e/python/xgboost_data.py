"""Data in the formats SageMaker's XGBoost reads besides CSV and libsvm, written by the
libraries a user would write them with, and a trained model scored.

    xgboost_data.py make OUT_DIR      train.rec, validation.rec (RecordIO-protobuf, by the
                                      SageMaker SDK's write_numpy_to_dense_tensor),
                                      train.parquet, validation.parquet (pandas, label first),
                                      held-out.csv (label first)
    xgboost_data.py score MODEL_TAR_GZ HELD_OUT_CSV
                                      prints `rmse=` of the model's predictions
"""
import io
import sys
import tarfile

import numpy as np


def rows(n, seed):
    """y = 3a - 2b + sin(4c) + noise, label first."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 3))
    y = 3 * x[:, 0] - 2 * x[:, 1] + np.sin(4 * x[:, 2]) + rng.normal(scale=0.05, size=n)
    return np.column_stack([y, x])


def make(out):
    import pandas as pd
    from sagemaker.amazon.common import write_numpy_to_dense_tensor

    for name, data in (("train", rows(1000, 1)), ("validation", rows(200, 2))):
        with open(f"{out}/{name}.rec", "wb") as f:
            write_numpy_to_dense_tensor(f, data[:, 1:].astype("float32"), data[:, 0].astype("float32"))
        frame = pd.DataFrame(data, columns=["y", "a", "b", "c"])
        frame.to_parquet(f"{out}/{name}.parquet", index=False)
    np.savetxt(f"{out}/held-out.csv", rows(300, 3), delimiter=",")


def score(model_tar, held_out):
    import xgboost

    with tarfile.open(model_tar) as tar:
        model = tar.extractfile("xgboost-model").read()
    booster = xgboost.Booster()
    booster.load_model(bytearray(model))
    data = np.loadtxt(held_out, delimiter=",", ndmin=2)
    predicted = booster.predict(xgboost.DMatrix(data[:, 1:]))
    print(f"rmse={float(np.sqrt(np.mean((predicted - data[:, 0]) ** 2)))}")
    print(f"rounds={booster.num_boosted_rounds()}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        score(sys.argv[2], sys.argv[3])
