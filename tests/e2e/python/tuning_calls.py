"""boto3's tuning operations against `smlocal serve`, one per invocation, each printing JSON.

    tuning_calls.py create REQUEST.json  -> the answer or the error
    tuning_calls.py wait NAME            -> DescribeHyperParameterTuningJob once it has ended
                                            (polled every half second), with "jobs": every
                                            training job summary through boto3's paginator (2
                                            a page) and "by_objective": the names sorted by
                                            FinalObjectiveMetricValue, Ascending
    tuning_calls.py stop NAME            -> StopHyperParameterTuningJob, then "wait"
    tuning_calls.py list                 -> ListHyperParameterTuningJobs' summaries
"""
import json
import sys
import time

import boto3
from botocore.exceptions import ClientError

sm = boto3.client("sagemaker")


def error(e):
    return {"error": e.response["Error"]["Code"], "message": e.response["Error"]["Message"]}


def wait(name):
    while True:
        d = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if d["HyperParameterTuningJobStatus"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.5)
    d.pop("ResponseMetadata", None)
    pages = sm.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
        HyperParameterTuningJobName=name, PaginationConfig={"PageSize": 2})
    d["jobs"] = [s for page in pages for s in page["TrainingJobSummaries"]]
    d["by_objective"] = [s["TrainingJobName"] for s in sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue", SortOrder="Ascending",
        MaxResults=100)["TrainingJobSummaries"]]
    d["training_jobs"] = {s["TrainingJobName"]: sm.describe_training_job(TrainingJobName=s["TrainingJobName"])
                          for s in d["jobs"]}
    for job in d["training_jobs"].values():
        job.pop("ResponseMetadata", None)
    return d


def main(command, *args):
    try:
        if command == "create":
            r = sm.create_hyper_parameter_tuning_job(**json.load(open(args[0])))
            r.pop("ResponseMetadata", None)
            return r
        if command == "wait":
            return wait(args[0])
        if command == "stop":
            sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=args[0])
            return wait(args[0])
        if command == "list":
            return sm.list_hyper_parameter_tuning_jobs(SortBy="CreationTime")["HyperParameterTuningJobSummaries"]
    except ClientError as e:
        return error(e)
    raise SystemExit(f"unknown command {command}")


print(json.dumps(main(*sys.argv[1:]), default=str))
