"""The SageMaker Python SDK v3, unmodified, through `smlocal serve`, set up as README says:
AWS_ENDPOINT_URL_SAGEMAKER / _CLOUDWATCH_LOGS / _S3 / _IAM, a default bucket on the Session,
telemetry off in the SDK config file.

    sdk_v3.py IMAGE S3_DATA S3_OUTPUT BUCKET LOCAL_DATA_FILE PROBE_IMAGE

Prints `job=<name> <status>` for each ModelTrainer run (two hosts on S3 data; one host on a
local file the SDK uploads), what sagemaker-core's TrainingJob reads back, and
`core_stopped=<status>` for a job it creates, stops and waits for.
"""
import logging
import sys
import time

from sagemaker.core.helper.session_helper import Session
from sagemaker.core.resources import TrainingJob
from sagemaker.core.shapes import AlgorithmSpecification, ResourceConfig, StoppingCondition
from sagemaker.core.shapes import OutputDataConfig as CoreOutput
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData, OutputDataConfig

# v3 prints the job's logs through `logging` only.
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
image, data, output, bucket, local, probe = sys.argv[1:7]
role = "arn:aws:iam::123456789012:role/SageMakerRole"
session = Session(default_bucket=bucket)


def trainer(hosts, name):
    return ModelTrainer(
        training_image=image,
        role=role,
        compute=Compute(instance_type="ml.m5.large", instance_count=hosts),
        hyperparameters={"epochs": "5"},
        output_data_config=OutputDataConfig(s3_output_path=output),
        sagemaker_session=session,
        base_job_name=name,
    )


two = trainer(2, "v3-two")
two.train(input_data_config=[InputData(channel_name="train", data_source=data)], wait=True, logs=True)
job = two._latest_training_job
print(f"job={job.training_job_name} {job.training_job_status}")

local_run = trainer(1, "v3-local")
local_run.train(input_data_config=[InputData(channel_name="train", data_source=local)], wait=True, logs=False)
job = local_run._latest_training_job
print(f"job={job.training_job_name} {job.training_job_status}")

fetched = TrainingJob.get(training_job_name=job.training_job_name, session=session.boto_session)
print(f"core_get={fetched.training_job_name} {fetched.training_job_status} {fetched.model_artifacts.s3_model_artifacts}")
names = sorted(j.training_job_name for j in TrainingJob.get_all(session=session.boto_session))
print(f"core_all={','.join(names)}")

long = TrainingJob.create(
    training_job_name=f"v3-core-{int(time.time())}",
    role_arn=role,
    algorithm_specification=AlgorithmSpecification(
        training_image=probe, training_input_mode="File", container_entrypoint=["/usr/local/bin/probe", "sleep", "60"]),
    output_data_config=CoreOutput(s3_output_path=output),
    resource_config=ResourceConfig(instance_type="ml.m5.large", instance_count=1, volume_size_in_gb=1),
    stopping_condition=StoppingCondition(max_runtime_in_seconds=600),
    session=session.boto_session,
)
time.sleep(2)
long.stop()
long.wait(poll=1, timeout=120)
print(f"core_stopped={long.training_job_status}")
