"""smlocal's local stand-in for SageMaker's XGBoost algorithm image (sagemaker-xgboost).

Written from the algorithm's documented contract (the SageMaker Developer Guide's XGBoost
pages and the open-source container's behaviour): channels, content types,
hyperparameters, metrics, checkpoints, the model file and the inference formats.
"""


class UserError(Exception):
    """A failure the request can fix (a hyperparameter, the data): its message is the
    job's FailureReason, as the algorithm words it."""
