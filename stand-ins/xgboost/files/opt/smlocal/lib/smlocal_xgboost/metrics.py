"""The evaluation metrics XGBoost does not compute itself (accuracy, f1, r2, mse, precision,
recall and their averages), from each round's predictions, as one custom metric."""

import numpy as np


def _classes(predictions, objective):
    if objective in ("multi:softprob",) or (predictions.ndim == 2 and predictions.shape[1] > 1):
        return np.argmax(predictions.reshape(predictions.shape[0], -1), axis=1)
    if objective.startswith("multi:"):
        return predictions.astype(int)
    if objective == "binary:logitraw":
        return (predictions > 0).astype(int)
    return (predictions > 0.5).astype(int)


def custom(names, objective):
    from sklearn import metrics as m

    def evaluate(predictions, dmatrix):
        labels = dmatrix.get_label()
        out = []
        for name in names:
            if name in ("mse", "r2"):
                value = m.mean_squared_error(labels, predictions) if name == "mse" else m.r2_score(labels, predictions)
            else:
                got = _classes(np.asarray(predictions), objective)
                average = {"f1": "weighted", "precision": "weighted", "recall": "weighted", "f1_binary": "binary",
                           "f1_macro": "macro", "precision_macro": "macro", "precision_micro": "micro",
                           "recall_macro": "macro", "recall_micro": "micro"}.get(name)
                if name == "accuracy":
                    value = m.accuracy_score(labels, got)
                elif name == "balanced_accuracy":
                    value = m.balanced_accuracy_score(labels, got)
                elif name.startswith("f1"):
                    value = m.f1_score(labels, got, average=average, zero_division=0)
                elif name.startswith("precision"):
                    value = m.precision_score(labels, got, average=average, zero_division=0)
                else:
                    value = m.recall_score(labels, got, average=average, zero_division=0)
            out.append((name, float(value)))
        return out

    return evaluate
