"""Script mode through `smlocal serve`: the SDK packs source_dir, uploads it to S3 and sends
its URI as `sagemaker_submit_directory`; the container must fetch it from there.

    sdk_script_mode.py IMAGE S3_DATA_PREFIX S3_OUTPUT_PATH

Prints what the SDK prints, then `model_data=<uri>` and `job_name=<name>`.
"""
import os
import sys

import boto3
import sagemaker
from sagemaker.pytorch import PyTorch

image, data, output = sys.argv[1:4]
estimator = PyTorch(
    entry_point="train.py",
    source_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "source"),
    image_uri=image,
    framework_version="2.1",
    py_version="py310",
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=1,
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=sagemaker.Session(boto_session=boto3.Session()),
    hyperparameters={"scale": 2},
    base_job_name="script-mode",
)
estimator.fit({"train": f"{data}/train/"}, wait=True, logs=True)
print(f"model_data={estimator.model_data}")
print(f"job_name={estimator.latest_training_job.name}")
