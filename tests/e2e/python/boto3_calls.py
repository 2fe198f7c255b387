"""Plain boto3 calls against `smlocal serve`, one per invocation, each printing JSON.

    boto3_calls.py create REQUEST.json        -> {"arn", "status", "secondary"} right after create
    boto3_calls.py create-many REQUEST.json N -> the outcome of N creates sent at once
    boto3_calls.py wait NAME                  -> the botocore waiter, then the description
    boto3_calls.py logs NAME                  -> every stream's events, 7 per page until an empty one
    boto3_calls.py list NAME_CONTAINS SIZE    -> the names the paginator walks, SIZE per page
    boto3_calls.py stop NAME                  -> {} or the error
    boto3_calls.py describe NAME              -> the description or the error
    boto3_calls.py hammer NAME N              -> N DescribeTrainingJob and GetLogEvents calls at
                                                 once (N threads, N connections): {"ok", "errors"}
    boto3_calls.py stop-all NAME_CONTAINS     -> stops every listed job not yet ended: {"stopped"}
    boto3_calls.py follow NAME                -> every line FilterLogEvents gives while the job
                                                 runs, followed as `aws logs tail --follow` does
                                                 (from the last event's time, deduplicated by
                                                 eventId), until it has ended

Endpoints come from AWS_ENDPOINT_URL_SAGEMAKER and AWS_ENDPOINT_URL_CLOUDWATCH_LOGS only.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.exceptions import ClientError

sm = boto3.client("sagemaker")
logs = boto3.client("logs")
GROUP = "/aws/sagemaker/TrainingJobs"


def error(e):
    return {"error": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
            "http": e.response["ResponseMetadata"]["HTTPStatusCode"]}


def call(fn, **kwargs):
    try:
        response = fn(**kwargs)
        response.pop("ResponseMetadata", None)
        return response
    except ClientError as e:
        return error(e)


def create(request):
    created = call(sm.create_training_job, **request)
    if "error" in created:
        return created
    described = sm.describe_training_job(TrainingJobName=request["TrainingJobName"])
    return {"arn": created["TrainingJobArn"], "status": described["TrainingJobStatus"],
            "secondary": described["SecondaryStatus"]}


def main(command, *args):
    if command == "create":
        return create(json.load(open(args[0])))
    if command == "create-many":
        template = json.load(open(args[0]))
        requests = [dict(template, TrainingJobName=f"{template['TrainingJobName']}-{i}") for i in range(int(args[1]))]
        # The same name twice as well: exactly one of those two may win.
        requests.append(dict(template, TrainingJobName=f"{template['TrainingJobName']}-0"))
        with ThreadPoolExecutor(len(requests)) as pool:
            return list(pool.map(create, requests))
    if command == "wait":
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=args[0], WaiterConfig={"Delay": 1, "MaxAttempts": 300})
        return json.loads(json.dumps(sm.describe_training_job(TrainingJobName=args[0]), default=str))
    if command == "logs":
        streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=args[0] + "/",
                                            orderBy="LogStreamName")
        out = {"nextToken": "nextToken" in streams, "streams": {}}
        for s in streams["logStreams"]:
            name, token, events, pages = s["logStreamName"], None, [], 0
            while True:
                extra = {"nextToken": token} if token else {}
                page = logs.get_log_events(logGroupName=GROUP, logStreamName=name, startFromHead=True,
                                           limit=7, **extra)
                pages += 1
                if not page["events"]:
                    break
                events += [e["message"] for e in page["events"]]
                token = page["nextForwardToken"]
            out["streams"][name] = {"events": events, "pages": pages}
        return out
    if command == "list":
        paginator = sm.get_paginator("list_training_jobs")
        pages = paginator.paginate(NameContains=args[0], SortBy="Name", SortOrder="Ascending",
                                   PaginationConfig={"PageSize": int(args[1])})
        sizes, names = [], []
        for page in pages:
            sizes.append(len(page["TrainingJobSummaries"]))
            names += [s["TrainingJobName"] for s in page["TrainingJobSummaries"]]
        return {"names": names, "pages": sizes}
    if command == "follow":
        import time
        seen, lines, start, ended = set(), [], 0, False
        while True:
            kwargs = {"logGroupName": GROUP, "logStreamNamePrefix": f"{args[0]}/", "startTime": start}
            while True:
                page = logs.filter_log_events(**kwargs)
                for event in page["events"]:
                    if event["eventId"] not in seen:
                        seen.add(event["eventId"])
                        lines.append(event["message"])
                        start = max(start, event["timestamp"])
                if "nextToken" not in page:
                    break
                kwargs["nextToken"] = page["nextToken"]
            if ended:
                return lines
            status = sm.describe_training_job(TrainingJobName=args[0])["TrainingJobStatus"]
            ended = status in ("Completed", "Failed", "Stopped")
            time.sleep(0.3)
    if command == "stop":
        return call(sm.stop_training_job, TrainingJobName=args[0])
    if command == "hammer":
        import threading
        from botocore.config import Config
        n = int(args[1])
        config = Config(max_pool_connections=n, retries={"max_attempts": 1, "mode": "standard"})
        client = boto3.client("sagemaker", config=config)
        log_client = boto3.client("logs", config=config)
        stream = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=args[0] + "/")["logStreams"][0][
            "logStreamName"]
        barrier = threading.Barrier(n)

        def one(i):
            barrier.wait()
            try:
                if i % 2:
                    client.describe_training_job(TrainingJobName=args[0])
                else:
                    log_client.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)
                return None
            except Exception as e:  # every failure is reported, whatever its kind
                return repr(e)

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n)))
        errors = [r for r in results if r is not None]
        return {"ok": n - len(errors), "errors": errors[:5]}
    if command == "stop-all":
        stopped = 0
        for page in sm.get_paginator("list_training_jobs").paginate(NameContains=args[0]):
            for s in page["TrainingJobSummaries"]:
                if s["TrainingJobStatus"] == "InProgress":
                    call(sm.stop_training_job, TrainingJobName=s["TrainingJobName"])
                    stopped += 1
        return {"stopped": stopped}
    if command == "describe":
        return json.loads(json.dumps(call(sm.describe_training_job, TrainingJobName=args[0]), default=str))
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
