"""The SageMaker Python SDK's own train → deploy → predict → delete, unmodified, through
`smlocal serve`.

    sdk_deploy.py IMAGE S3_DATA_PREFIX S3_OUTPUT_PATH

Prints `model_data=<uri>`, `endpoint=<name>`, `predictions=<JSON>` (for the rows 1,2 and
-1,0.5), `deploy_seconds=<time deploy() took>`, then `deleted` once the endpoint, its
configuration and its model are gone.
"""
import json
import sys
import time

import boto3
import sagemaker
from sagemaker.deserializers import CSVDeserializer
from sagemaker.estimator import Estimator
from sagemaker.serializers import CSVSerializer

image, data, output = sys.argv[1:4]
session = sagemaker.Session(boto_session=boto3.Session())
estimator = Estimator(
    image_uri=image,
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=1,
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=session,
    hyperparameters={"epochs": 30, "learning_rate": 0.1},
    base_job_name="sdk-deploy",
)
estimator.fit({"train": f"{data}/train/"}, wait=True, logs=False)
print(f"model_data={estimator.model_data}")
started = time.time()
predictor = estimator.deploy(
    initial_instance_count=1,
    instance_type="ml.m5.large",
    serializer=CSVSerializer(),
    deserializer=CSVDeserializer(),
)
print(f"deploy_seconds={time.time() - started:.2f}")
print(f"endpoint={predictor.endpoint_name}")
predictions = predictor.predict([[1, 2], [-1, 0.5]])
print(f"predictions={json.dumps(predictions)}")
# The SDK's own order: the model (it reads the configuration to find it), then the endpoint
# and its configuration.
predictor.delete_model()
predictor.delete_endpoint()
print("deleted")
