"""The algorithm's hyperparameters: names, types, ranges and defaults, and how a request's
string values become XGBoost's parameters. A value out of range, a name the algorithm does
not know, or a missing num_round fails the job with a message naming the hyperparameter."""

import math

from . import UserError

# Evaluation metrics, by the direction a tuner optimises them (the names XGBoost and the
# SageMaker algorithm print as `<channel>-<metric>`).
MAXIMIZE = ["accuracy", "auc", "aucpr", "balanced_accuracy", "f1", "f1_binary", "f1_macro", "map", "ndcg",
            "precision", "r2", "recall", "precision_macro", "precision_micro", "recall_macro", "recall_micro"]
MINIMIZE = ["aft-nloglik", "cox-nloglik", "error", "gamma-deviance", "gamma-nloglik",
            "interval-regression-accuracy", "logloss", "mae", "mape", "merror", "mlogloss", "mphe", "mse",
            "poisson-nloglik", "rmse", "rmsle", "tweedie-nloglik"]
# Metrics XGBoost computes itself; the others are computed here from the predictions.
NATIVE = {"auc", "aucpr", "error", "logloss", "mae", "mape", "merror", "mlogloss", "mphe", "rmse", "rmsle",
          "map", "ndcg", "poisson-nloglik", "gamma-nloglik", "gamma-deviance", "cox-nloglik", "aft-nloglik",
          "interval-regression-accuracy", "tweedie-nloglik"}

OBJECTIVES = ["binary:hinge", "binary:logistic", "binary:logitraw", "count:poisson", "multi:softmax",
              "multi:softprob", "rank:map", "rank:ndcg", "rank:pairwise", "reg:absoluteerror", "reg:gamma",
              "reg:linear", "reg:logistic", "reg:pseudohubererror", "reg:squarederror", "reg:squaredlogerror",
              "reg:tweedie", "survival:aft", "survival:cox"]


class Range:
    """An interval, written as the message shows it: [a, b], (a, b), [a, inf)."""

    def __init__(self, low=-math.inf, high=math.inf, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __contains__(self, v):
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def __str__(self):
        def num(x):
            return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"
        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"{left}{num(self.low)}, {num(self.high)}{right}"


def _integer(text):
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _boolean(text):
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(text)


class Spec:
    def __init__(self, kind, within=None, required=False, choices=None, param=True):
        self.kind, self.within, self.required, self.choices, self.param = kind, within, required, choices, param

    def parse(self, name, text):
        try:
            if self.kind == "int":
                value = _integer(text)
            elif self.kind == "float":
                value = float(text)
            elif self.kind == "bool":
                value = _boolean(text)
            elif self.kind == "list":
                value = [v.strip() for v in text.split(",") if v.strip()]
            else:
                value = text
        except ValueError:
            raise UserError(f"Hyperparameter {name}: could not parse value {text!r} as {KIND_WORDS[self.kind]}")
        if self.within is not None and value not in self.within:
            raise UserError(f"Hyperparameter {name}: value {text} not in range {self.within}")
        if self.choices is not None:
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v not in self.choices:
                    raise UserError(f"Hyperparameter {name}: {v} is not in {self.choices}")
        return value


KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "list": "a list", "str": "text"}
UNIT = Range(0, 1)
NON_NEGATIVE = Range(0)
POSITIVE_TO_ONE = Range(0, 1, low_open=True)

SPECS = {
    "num_round": Spec("int", Range(1), required=True, param=False),
    "early_stopping_rounds": Spec("int", Range(1), param=False),
    "csv_weights": Spec("int", Range(0, 1), param=False),
    "save_model_on_termination": Spec("bool", param=False),
    "booster": Spec("str", choices=["gbtree", "gblinear", "dart"]),
    "verbosity": Spec("int", Range(0, 3)),
    "nthread": Spec("int", Range(1)),
    "eta": Spec("float", UNIT),
    "gamma": Spec("float", NON_NEGATIVE),
    "max_depth": Spec("int", NON_NEGATIVE),
    "min_child_weight": Spec("float", NON_NEGATIVE),
    "max_delta_step": Spec("float", NON_NEGATIVE),
    "subsample": Spec("float", POSITIVE_TO_ONE),
    "sampling_method": Spec("str", choices=["uniform", "gradient_based"]),
    "colsample_bytree": Spec("float", POSITIVE_TO_ONE),
    "colsample_bylevel": Spec("float", POSITIVE_TO_ONE),
    "colsample_bynode": Spec("float", POSITIVE_TO_ONE),
    "lambda": Spec("float", NON_NEGATIVE),
    "alpha": Spec("float", NON_NEGATIVE),
    "tree_method": Spec("str", choices=["auto", "exact", "approx", "hist", "gpu_hist"]),
    "sketch_eps": Spec("float", Range(0, 1, low_open=True, high_open=True)),
    "scale_pos_weight": Spec("float", Range(0, low_open=True)),
    "updater": Spec("list", choices=["grow_colmaker", "distcol", "grow_histmaker", "grow_local_histmaker",
                                     "grow_skmaker", "sync", "refresh", "prune", "shotgun", "coord_descent",
                                     "grow_quantile_histmaker", "grow_gpu_hist"]),
    "dsplit": Spec("str", choices=["row", "col"]),
    "refresh_leaf": Spec("int", Range(0, 1)),
    "process_type": Spec("str", choices=["default", "update"]),
    "grow_policy": Spec("str", choices=["depthwise", "lossguide"]),
    "max_leaves": Spec("int", NON_NEGATIVE),
    "max_bin": Spec("int", Range(2)),
    "num_parallel_tree": Spec("int", Range(1)),
    "sample_type": Spec("str", choices=["uniform", "weighted"]),
    "normalize_type": Spec("str", choices=["tree", "forest"]),
    "rate_drop": Spec("float", UNIT),
    "one_drop": Spec("int", Range(0, 1)),
    "skip_drop": Spec("float", UNIT),
    "lambda_bias": Spec("float", UNIT),
    "tweedie_variance_power": Spec("float", Range(1, 2, low_open=True, high_open=True)),
    "objective": Spec("str", choices=OBJECTIVES),
    "num_class": Spec("int", Range(2)),
    "base_score": Spec("float"),
    "eval_metric": Spec("list", choices=sorted(set(MAXIMIZE + MINIMIZE))),
    "seed": Spec("int"),
    "single_precision_histogram": Spec("bool"),
    "deterministic_histogram": Spec("bool"),
    "monotone_constraints": Spec("str"),
    "interaction_constraints": Spec("str"),
    "max_cat_to_onehot": Spec("int", Range(1)),
    "huber_slope": Spec("float", Range(0, low_open=True)),
    "aft_loss_distribution": Spec("str", choices=["normal", "logistic", "extreme"]),
    "aft_loss_distribution_scale": Spec("float", Range(0, low_open=True)),
}


class Hyperparameters:
    """A request's hyperparameters, checked: `params` for xgboost.train, and the rest."""

    def __init__(self, raw):
        values = {}
        for name, text in sorted(raw.items()):
            # The platform's and the SDK's own keys are not the algorithm's.
            if name.startswith("sagemaker_") or name.startswith("_"):
                continue
            spec = SPECS.get(name)
            if spec is None:
                raise UserError(f"Extraneous hyperparameter found: {name}")
            values[name] = spec.parse(name, str(text))
        for name, spec in SPECS.items():
            if spec.required and name not in values:
                raise UserError(f"Missing required hyperparameter: {name}")
        objective = values.get("objective", "reg:squarederror")
        if objective.startswith("multi:") and "num_class" not in values:
            raise UserError(f"Hyperparameter num_class: required when objective is {objective}")
        if "num_class" in values and not objective.startswith("multi:"):
            raise UserError(f"Hyperparameter num_class: only used with a multi: objective, not {objective}")
        self.values = values
        self.num_round = values["num_round"]
        self.early_stopping_rounds = values.get("early_stopping_rounds")
        self.csv_weights = values.get("csv_weights", 0) == 1
        self.objective = objective
        metrics = values.get("eval_metric", [])
        self.eval_metric = metrics
        params = {k: v for k, v in values.items() if SPECS[k].param and k != "eval_metric"}
        params["objective"] = objective
        if "updater" in params:
            params["updater"] = ",".join(params["updater"])
        params.setdefault("verbosity", 1)
        native = [m for m in metrics if m in NATIVE]
        if native:
            params["eval_metric"] = native
        self.params = params
        self.custom_metrics = [m for m in metrics if m not in NATIVE]

