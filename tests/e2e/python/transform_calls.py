"""boto3 batch transform against `smlocal serve`, one command per invocation, printing JSON.

    transform_calls.py model NAME IMAGE MODEL_URL ENV_JSON -> CreateModel
    transform_calls.py run REQUEST.json      -> CreateTransformJob, the waiter, then the description
    transform_calls.py stop-after NAME SECS REQUEST.json
        -> CreateTransformJob, StopTransformJob after SECS, the waiter, the description
    transform_calls.py logs NAME             -> the job's streams and their messages
"""
import json
import sys
import time

import boto3
from botocore.exceptions import ClientError, WaiterError

sm = boto3.client("sagemaker")
logs = boto3.client("logs")
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def wait(name):
    try:
        sm.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    except WaiterError:
        pass  # Failed is an answer too: the description says why


def describe(name):
    described = sm.describe_transform_job(TransformJobName=name)
    described.pop("ResponseMetadata", None)
    return described


def main(command, *args):
    if command == "model":
        name, image, model_url, env = args
        container = {"Image": image, "Environment": json.loads(env)}
        if model_url != "-":
            container["ModelDataUrl"] = model_url
        sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
        return {"model": name}
    if command == "run":
        request = json.load(open(args[0]))
        try:
            sm.create_transform_job(**request)
        except ClientError as e:
            return {"error": e.response["Error"]["Code"], "message": e.response["Error"]["Message"]}
        first = describe(request["TransformJobName"])["TransformJobStatus"]
        wait(request["TransformJobName"])
        return dict(describe(request["TransformJobName"]), FirstStatus=first)
    if command == "stop-after":
        name, secs, path = args
        sm.create_transform_job(**json.load(open(path)))
        time.sleep(float(secs))
        started = time.time()
        sm.stop_transform_job(TransformJobName=name)
        stopping = describe(name)["TransformJobStatus"]
        wait(name)
        return dict(describe(name), StoppingStatus=stopping, StopSeconds=time.time() - started)
    if command == "logs":
        group = "/aws/sagemaker/TransformJobs"
        streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{args[0]}/")["logStreams"]
        out = {}
        for s in streams:
            events = logs.get_log_events(logGroupName=group, logStreamName=s["logStreamName"], startFromHead=True)
            out[s["logStreamName"]] = [e["message"] for e in events["events"]]
        return out
    raise SystemExit(f"unknown command {command}")


print(json.dumps(main(*sys.argv[1:]), default=str))
