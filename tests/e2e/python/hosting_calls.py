"""boto3's `sagemaker` and `sagemaker-runtime` clients against `smlocal serve`, one scenario
per invocation, each printing JSON.

    hosting_calls.py deploy NAME IMAGE MODEL_URL ENV_JSON [COUNT] [VARIANTS] [isolated]
        -> CreateModel + CreateEndpointConfig + CreateEndpoint, then the botocore waiter;
           prints the description (or the waiter's last description when it failed).
           VARIANTS > 1 makes that many variants of weight 1 (v1, v2, ...); `isolated` sets
           the model's EnableNetworkIsolation.
    hosting_calls.py invoke NAME BODY_BYTES [HEADERS_JSON] -> the answer or the error
    hosting_calls.py invoke-many NAME N        -> the bodies of N invocations in order
    hosting_calls.py stream NAME ATTRIBUTES    -> the PayloadPart chunks of a streamed answer
    hosting_calls.py describe NAME             -> DescribeEndpoint or the error
    hosting_calls.py update-under-load NAME IMAGE MODEL_URL ENV_JSON
        -> invokes in a loop while UpdateEndpoint moves to a new model, until InService:
           {"failures": [...], "answers": [distinct bodies in order], "status": ...}
    hosting_calls.py logs NAME                 -> every stream's messages
    hosting_calls.py delete NAME               -> DeleteEndpoint, then DescribeEndpoint's error
    hosting_calls.py lists PREFIX              -> ListModels / ListEndpointConfigs / ListEndpoints names
                                                  and the refusals of impossible requests
    hosting_calls.py evil-archive S3_URI       -> uploads a model.tar.gz with an entry '../evil'

MODEL_URL is a ModelDataUrl, `-` for none, or `prefix:S3_URI` for an uncompressed
ModelDataSource (S3Prefix, CompressionType None).

Clients are configured only by AWS_ENDPOINT_URL_SAGEMAKER(_RUNTIME) and the credentials.
"""
import json
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

sm = boto3.client("sagemaker")
runtime = boto3.client("sagemaker-runtime", config=Config(read_timeout=120, retries={"max_attempts": 0}))
logs = boto3.client("logs")
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def error(e):
    out = {"error": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
           "http": e.response["ResponseMetadata"]["HTTPStatusCode"]}
    for key in ("OriginalStatusCode", "OriginalMessage", "LogStreamArn"):
        if key in e.response:
            out[key] = e.response[key]
    return out


def call(fn, **kwargs):
    try:
        response = fn(**kwargs)
        response.pop("ResponseMetadata", None)
        return response
    except ClientError as e:
        return error(e)


def create_model(name, image, model_url, env, isolated=False):
    container = {"Image": image, "Environment": env}
    if model_url.startswith("prefix:"):
        container["ModelDataSource"] = {"S3DataSource": {
            "S3Uri": model_url[len("prefix:"):], "S3DataType": "S3Prefix", "CompressionType": "None"}}
    elif model_url != "-":
        container["ModelDataUrl"] = model_url
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container,
                    EnableNetworkIsolation=isolated)


def deploy(name, image, model_url, env, count=1, variants=1, isolated=False):
    create_model(name, image, model_url, env, isolated)
    production = [{
        "VariantName": "AllTraffic" if variants == 1 else f"v{i + 1}",
        "ModelName": name,
        "InstanceType": "ml.c5.large",
        "InitialInstanceCount": count,
        "InitialVariantWeight": 1.0,
        "ContainerStartupHealthCheckTimeoutInSeconds": 60,
    } for i in range(variants)]
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=production)
    created = sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    first = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    except WaiterError:
        pass
    described = sm.describe_endpoint(EndpointName=name)
    described.pop("ResponseMetadata", None)
    described["FirstStatus"] = first
    described["CreatedArn"] = created["EndpointArn"]
    return described


def invoke(name, body, headers=None):
    kwargs = {"EndpointName": name, "Body": body, "ContentType": "text/csv"}
    kwargs.update(headers or {})
    answer = call(runtime.invoke_endpoint, **kwargs)
    if "Body" in answer:
        answer["Body"] = answer["Body"].read().decode("utf-8", "replace")
    return answer


def main(command, *args):
    if command == "deploy":
        name, image, model_url, env = args[:4]
        count = int(args[4]) if len(args) > 4 else 1
        variants = int(args[5]) if len(args) > 5 else 1
        isolated = len(args) > 6 and args[6] == "isolated"
        return deploy(name, image, model_url, json.loads(env), count, variants, isolated)
    if command == "invoke":
        headers = json.loads(args[2]) if len(args) > 2 else {}
        return invoke(args[0], b"x" * int(args[1]) if args[1].isdigit() else args[1].encode(), headers)
    if command == "invoke-many":
        return [invoke(args[0], b"1,2").get("Body") for _ in range(int(args[1]))]
    if command == "stream":
        answer = call(runtime.invoke_endpoint_with_response_stream, EndpointName=args[0], Body=b"go",
                      ContentType="text/plain", CustomAttributes=args[1])
        if "error" in answer:
            return answer
        parts = [event["PayloadPart"]["Bytes"].decode() for event in answer["Body"] if "PayloadPart" in event]
        return {"parts": parts, "ContentType": answer.get("ContentType"),
                "InvokedProductionVariant": answer.get("InvokedProductionVariant")}
    if command == "describe":
        return call(sm.describe_endpoint, EndpointName=args[0])
    if command == "update-under-load":
        name, image, model_url, env = args
        new = f"{name}-next"
        create_model(new, image, model_url, json.loads(env))
        sm.create_endpoint_config(EndpointConfigName=new, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": new, "InstanceType": "ml.c5.large",
            "InitialInstanceCount": 1}])
        failures, answers, done = [], [], threading.Event()

        def load():
            while not done.is_set():
                got = invoke(name, b"1")
                if "error" in got:
                    failures.append(got)
                elif not answers or answers[-1] != got["Body"]:
                    answers.append(got["Body"])

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.5)
        sm.update_endpoint(EndpointName=name, EndpointConfigName=new)
        during = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        time.sleep(1.5)
        done.set()
        worker.join()
        described = sm.describe_endpoint(EndpointName=name)
        return {"failures": failures, "answers": answers, "during": during,
                "status": described["EndpointStatus"], "config": described["EndpointConfigName"]}
    if command == "logs":
        group = f"/aws/sagemaker/Endpoints/{args[0]}"
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
        out = {}
        for s in streams:
            events = logs.get_log_events(logGroupName=group, logStreamName=s["logStreamName"], startFromHead=True)
            out[s["logStreamName"]] = [e["message"] for e in events["events"]]
        return out
    if command == "delete":
        deleted = call(sm.delete_endpoint, EndpointName=args[0])
        for _ in range(100):
            after = call(sm.describe_endpoint, EndpointName=args[0])
            if "error" in after:
                break
            time.sleep(0.2)
        return {"deleted": deleted, "after": after}
    if command == "lists":
        return {
            "models": [m["ModelName"] for m in sm.list_models(NameContains=args[0])["Models"]],
            "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs(NameContains=args[0])["EndpointConfigs"]],
            "endpoints": [e["EndpointName"] for e in sm.list_endpoints(NameContains=args[0])["Endpoints"]],
            "model_again": call(sm.create_model, ModelName=f"{args[0]}", ExecutionRoleArn=ROLE,
                                PrimaryContainer={"Image": "smlocal/probe:latest"}),
            "unknown_endpoint": call(sm.describe_endpoint, EndpointName="no-such-endpoint"),
            "missing_image": call(sm.create_model, ModelName=f"{args[0]}-noimage", ExecutionRoleArn=ROLE,
                                  PrimaryContainer={"Image": "smlocal/no-such-image:latest"}),
            "async_config": call(sm.create_endpoint_config, EndpointConfigName=f"{args[0]}-async",
                                 ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": args[0],
                                                      "InstanceType": "ml.c5.large", "InitialInstanceCount": 1}],
                                 AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://b/async/"}}),
            "unknown_model": call(sm.create_endpoint_config, EndpointConfigName=f"{args[0]}-nomodel",
                                  ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "no-such-model",
                                                       "InstanceType": "ml.c5.large", "InitialInstanceCount": 1}]),
        }
    if command == "evil-archive":
        import io
        import tarfile
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            data = b"escaped"
            info = tarfile.TarInfo("../evil")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        bucket, key = args[0][len("s3://"):].split("/", 1)
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        return {"uploaded": args[0]}
    raise SystemExit(f"unknown command {command}")


print(json.dumps(main(*sys.argv[1:]), default=str))
