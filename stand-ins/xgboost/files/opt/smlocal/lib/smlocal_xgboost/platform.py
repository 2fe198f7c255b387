"""What the platform gives the container (/opt/ml), and the stand-in's first line."""

import json
import os
import sys

ML = os.environ.get("SMLOCAL_ML_ROOT", "/opt/ml")
CONFIG = os.path.join(ML, "input", "config")
DATA = os.path.join(ML, "input", "data")
MODEL = os.path.join(ML, "model")
FAILURE = os.path.join(ML, "output", "failure")


def config(name, default=None):
    path = os.path.join(CONFIG, name)
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def banner(what):
    """Once, first: that this is smlocal's stand-in, for which image, with what inside."""
    import numpy
    import scipy
    import xgboost
    stands_for = os.environ.get("SMLOCAL_STANDS_FOR", "sagemaker-xgboost")
    print(f"smlocal: a local stand-in for SageMaker's {stands_for} image ({what}); "
          f"xgboost {xgboost.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, "
          f"python {sys.version.split()[0]}", flush=True)


def fail(message, code=1):
    """Ends the run as a failed algorithm, `message` its FailureReason."""
    os.makedirs(os.path.dirname(FAILURE), exist_ok=True)
    with open(FAILURE, "w") as f:
        f.write(message)
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)
