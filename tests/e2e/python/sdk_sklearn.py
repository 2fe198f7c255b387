"""The SDK's SKLearn estimator through `smlocal serve`, with IMAGE as image_uri, or, for `-`,
the image the SDK picks itself for framework_version 1.2-1 (AWS's registry path, which
smlocal runs as its stand-in).

    sdk_sklearn.py IMAGE S3_DATA_PREFIX S3_OUTPUT_PATH ISOLATED INSTANCES

ISOLATED is 1 for enable_network_isolation=True (the SDK then ships the code as a channel).
Prints what the SDK prints, then `model_data=<uri>`, `job_name=<name>` and, from
TrainingJobAnalytics, `analytics=<json rows>`.
"""
import json
import os
import sys
import time

import boto3
import sagemaker
from sagemaker.analytics import TrainingJobAnalytics
from sagemaker.sklearn import SKLearn

image, data, output, isolated, instances = sys.argv[1:6]
session = sagemaker.Session(boto_session=boto3.Session())
estimator = SKLearn(
    entry_point="train.py",
    source_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toolkit"),
    image_uri=None if image == "-" else image,
    framework_version="1.2-1",
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=int(instances),
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=session,
    enable_network_isolation=isolated == "1",
    metric_definitions=[{"Name": "train:rmse", "Regex": "#011train-rmse:([0-9.]+)"}],
    base_job_name="sklearn",
)
started = time.time()
estimator.fit({"train": f"{data}/train/"}, wait=True, logs=True)
returned = time.time()
print(f"model_data={estimator.model_data}")
print(f"image={estimator.training_image_uri()}")
name = estimator.latest_training_job.name
print(f"job_name={name}")
job = session.sagemaker_client.describe_training_job(TrainingJobName=name)
ended = job["TrainingEndTime"].timestamp()
print(f"fit_seconds={returned - started:.1f} job_seconds={ended - job['CreationTime'].timestamp():.1f} returned_after_end={returned - ended:.1f}")
frame = TrainingJobAnalytics(name, metric_names=["train:rmse"], sagemaker_session=session).dataframe()
print("analytics=" + frame.to_json(orient="records"))
