"""The SageMaker Python SDK's own Estimator, unmodified, trained through `smlocal serve`.

    sdk_fit.py IMAGE S3_DATA_PREFIX S3_OUTPUT_PATH

Prints what the SDK prints (status lines and the job's logs), then `model_data=<uri>` and
`fit_seconds=<time from fit() to its return>`.
"""
import sys
import time

import boto3
import sagemaker
from sagemaker.estimator import Estimator

image, data, output = sys.argv[1:4]
estimator = Estimator(
    image_uri=image,
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=1,
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=sagemaker.Session(boto_session=boto3.Session()),
    hyperparameters={"epochs": 30, "learning_rate": 0.1},
    metric_definitions=[{"Name": "validation:mse", "Regex": "validation_mse=([0-9.]+)"}],
    base_job_name="sdk-fit",
)
started = time.time()
estimator.fit({"train": f"{data}/train/", "validation": f"{data}/validation/"}, wait=True, logs=True)
print(f"fit_seconds={time.time() - started:.2f}")
print(f"model_data={estimator.model_data}")
print(f"job_name={estimator.latest_training_job.name}")
