"""SageMaker's built-in XGBoost as the SDK's documentation runs it, through `smlocal serve`:
the image from `image_uris.retrieve("xgboost", "us-east-1", "1.7-1")`, an `Estimator` with no
metric definitions, `fit` with train and validation channels. Then the model is loaded in
xgboost here and scored on held-out rows.

    sdk_xgboost.py S3_DATA_PREFIX S3_OUTPUT_PATH INSTANCES CONTENT_TYPE DISTRIBUTION HYPERPARAMETERS_JSON HELD_OUT_CSV DEPLOY

Prints what the SDK prints, then `result=` and one JSON line: the job's status, FailureReason,
FinalMetricDataList, the names of its MetricDefinitions, and the RMSE on the held-out rows.
With DEPLOY=1 the SDK also deploys the model and predicts the first held-out rows sent as
text/csv and as text/libsvm (`served_csv`, `served_libsvm`, beside xgboost's own `local`).
"""
import io
import json
import sys
import tarfile
import time

import boto3
import numpy as np
import sagemaker
import xgboost
from sagemaker import image_uris
from sagemaker.estimator import Estimator
from sagemaker.inputs import TrainingInput

data, output, instances, content_type, distribution, hyperparameters, held_out, deploy = sys.argv[1:9]
session = sagemaker.Session(boto_session=boto3.Session())
image = image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
estimator = Estimator(
    image_uri=image,
    role="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_count=int(instances),
    instance_type="ml.m5.large",
    output_path=output,
    sagemaker_session=session,
    base_job_name="xgboost",
)
estimator.set_hyperparameters(**json.loads(hyperparameters))
started = time.time()
try:
    estimator.fit(
        {
            "train": TrainingInput(f"{data}/train/", content_type=content_type, distribution=distribution),
            "validation": TrainingInput(f"{data}/validation/", content_type=content_type),
        },
        wait=True,
        logs=True,
    )
except sagemaker.exceptions.UnexpectedStatusException as e:
    print(f"fit raised: {e}")
seconds = time.time() - started
job = session.sagemaker_client.describe_training_job(TrainingJobName=estimator.latest_training_job.name)
result = {
    "image": image,
    "status": job["TrainingJobStatus"],
    "failure": job.get("FailureReason"),
    "final": {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])},
    "definitions": [d["Name"] for d in job["AlgorithmSpecification"].get("MetricDefinitions", [])],
    "fit_seconds": round(seconds, 2),
}
if job["TrainingJobStatus"] == "Completed":
    bucket, key = job["ModelArtifacts"]["S3ModelArtifacts"][len("s3://"):].split("/", 1)
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        result["model_files"] = sorted(tar.getnames())
        model = tar.extractfile("xgboost-model").read()
    booster = xgboost.Booster()
    booster.load_model(bytearray(model))
    rows = np.loadtxt(held_out, delimiter=",", ndmin=2)
    predicted = booster.predict(xgboost.DMatrix(rows[:, 1:]))
    result["rmse"] = float(np.sqrt(np.mean((predicted - rows[:, 0]) ** 2)))
    if deploy == "1":
        from sagemaker.deserializers import CSVDeserializer
        from sagemaker.serializers import CSVSerializer

        predictor = estimator.deploy(
            initial_instance_count=1, instance_type="ml.m5.large",
            serializer=CSVSerializer(), deserializer=CSVDeserializer())
        first = rows[:5, 1:]
        result["local"] = [float(v) for v in predicted[:5]]
        result["served_csv"] = [float(r[0]) for r in predictor.predict(first.tolist())]
        libsvm = "\n".join(" ".join(f"{i}:{v}" for i, v in enumerate(row)) for row in first)
        answer = predictor.predict(libsvm, initial_args={"ContentType": "text/libsvm"})
        result["served_libsvm"] = [float(r[0]) for r in answer]
        predictor.delete_model()
        predictor.delete_endpoint()
# After the SDK's progress dots, on a line of its own.
print("\nresult=" + json.dumps(result))
