"""The SageMaker SDK v2's HyperparameterTuner, unchanged, through `smlocal serve`: the sample
algorithm tuned over two continuous ranges (one logarithmic) and one categorical.

    sdk_tune.py S3_DATA_PREFIX S3_OUTPUT_PATH STRATEGY MAX_JOBS MAX_PARALLEL SEED

Prints `result=` and one JSON line: the tuning job's description, `best_training_job()`,
`analytics().dataframe()` as records, and each training job's HyperParameters.
"""
import json
import sys
import time

import boto3
import sagemaker
from sagemaker.estimator import Estimator
from sagemaker.inputs import TrainingInput
from sagemaker.tuner import CategoricalParameter, ContinuousParameter, HyperparameterTuner

data, output, strategy, max_jobs, max_parallel, seed = sys.argv[1:7]
session = sagemaker.Session(boto_session=boto3.Session())
metric_definitions = [
    {"Name": "validation:mse", "Regex": "validation_mse=([0-9.eE+-]+)"},
    {"Name": "train:mse", "Regex": "train_mse=([0-9.eE+-]+)"},
]
estimator = Estimator(
    image_uri="smlocal/linear-regression:latest",
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=1,
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=session,
    hyperparameters={"epochs": "20"},
    metric_definitions=metric_definitions,
)
tuner = HyperparameterTuner(
    estimator,
    objective_metric_name="validation:mse",
    objective_type="Minimize",
    metric_definitions=metric_definitions,
    hyperparameter_ranges={
        "learning_rate": ContinuousParameter(0.001, 0.1, scaling_type="Logarithmic"),
        "l2": ContinuousParameter(0.0, 0.05),
        "optimizer": CategoricalParameter(["gd", "momentum"]),
    },
    strategy=strategy,
    max_jobs=int(max_jobs),
    max_parallel_jobs=int(max_parallel),
    random_seed=int(seed),
    # The SDK names tuning jobs to the minute: one base per search, as AWS needs too.
    base_tuning_job_name=f"tune-{strategy.lower()}",
)
started = time.time()
tuner.fit({"train": TrainingInput(f"{data}/train/"), "validation": TrainingInput(f"{data}/validation/")}, wait=True)
seconds = time.time() - started
name = tuner.latest_tuning_job.name
described = session.sagemaker_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
frame = tuner.analytics().dataframe()
jobs = {}
for row in frame.to_dict("records"):
    job = session.sagemaker_client.describe_training_job(TrainingJobName=row["TrainingJobName"])
    jobs[row["TrainingJobName"]] = job["HyperParameters"]
result = {
    "name": name,
    "seconds": round(seconds, 2),
    "status": described["HyperParameterTuningJobStatus"],
    "counters": described["TrainingJobStatusCounters"],
    "objective_counters": described["ObjectiveStatusCounters"],
    "best": tuner.best_training_job(),
    "best_value": described["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
    "ranges": described["HyperParameterTuningJobConfig"]["ParameterRanges"],
    "frame": [{k: (v if v == v else None) for k, v in r.items() if not k.startswith("Training") or k in ("TrainingJobName", "TrainingJobStatus")}
              for r in frame.to_dict("records")],
    "hyperparameters": jobs,
}
print("result=" + json.dumps(result, default=str))
