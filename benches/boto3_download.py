"""The boto3 floor for staging: list a prefix, then download every object with N threads
(one shared client, as boto3's docs advise), printing the seconds it took.

    boto3_download.py ENDPOINT BUCKET PREFIX DEST THREADS
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

endpoint, bucket, prefix, dest, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=threads))
started = time.monotonic()
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    keys.extend(o["Key"] for o in page.get("Contents", []))


def fetch(key):
    path = os.path.join(dest, key.replace("/", "_"))
    with open(path, "wb") as f:
        f.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


with ThreadPoolExecutor(threads) as pool:
    list(pool.map(fetch, keys))
print(f"{time.monotonic() - started:.4f} {len(keys)}")
