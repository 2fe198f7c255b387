"""The SageMaker Python SDK's own batch transform, unmodified, through `smlocal serve`:
train the sample, `estimator.transformer(...)`, `transform(..., wait=True, logs=True)`.

    sdk_transform.py IMAGE S3_DATA_PREFIX S3_OUTPUT_PATH S3_INPUT_PREFIX S3_TRANSFORM_OUTPUT

Prints `model_data=<uri>`, `job=<transform job name>` and `seconds=<transform()'s time>`.
"""
import sys
import time

import boto3
import sagemaker
from sagemaker.estimator import Estimator

image, data, output, transform_input, transform_output = sys.argv[1:6]
session = sagemaker.Session(boto_session=boto3.Session())
estimator = Estimator(
    image_uri=image,
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=1,
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=session,
    hyperparameters={"epochs": 30, "learning_rate": 0.1},
    base_job_name="sdk-transform",
)
estimator.fit({"train": f"{data}/train/"}, wait=True, logs=False)
print(f"model_data={estimator.model_data}")
transformer = estimator.transformer(
    instance_count=1, instance_type="ml.m5.large", output_path=transform_output,
    assemble_with="Line", accept="text/csv")
started = time.time()
transformer.transform(transform_input, content_type="text/csv", split_type="Line", wait=True, logs=True)
print(f"seconds={time.time() - started:.2f}")
print(f"job={transformer.latest_transform_job.name}")
