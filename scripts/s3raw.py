#!/usr/bin/env python3
"""Raw parallel PUT and GET throughput of an S3 endpoint: the ceiling any
file system over it can reach. Writes TOTAL bytes as OBJECT-sized objects
with THREADS threads, reads them back, deletes them. Prints
`raw put MIB_PER_S` and `raw get MIB_PER_S`.

Usage: s3raw.py ENDPOINT BUCKET [--total-mib 1024] [--object-mib 4] [--threads 8]
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("bucket")
    ap.add_argument("--total-mib", type=int, default=1024)
    ap.add_argument("--object-mib", type=int, default=4)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    s3 = boto3.client(
        "s3",
        endpoint_url=a.endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=a.threads * 2, s3={"addressing_style": "path"}),
    )
    body = os.urandom(a.object_mib << 20)
    keys = [f"s3raw/{i}" for i in range(a.total_mib // a.object_mib)]

    def put(k):
        s3.put_object(Bucket=a.bucket, Key=k, Body=body)

    def get(k):
        n = len(s3.get_object(Bucket=a.bucket, Key=k)["Body"].read())
        if n != len(body):
            raise SystemExit(f"{k}: got {n} bytes, put {len(body)}")

    with ThreadPoolExecutor(a.threads) as pool:
        for name, fn in (("put", put), ("get", get)):
            t0 = time.perf_counter()
            list(pool.map(fn, keys))
            print(f"raw {name} {len(keys) * a.object_mib / (time.perf_counter() - t0):.1f}")
        list(pool.map(lambda k: s3.delete_object(Bucket=a.bucket, Key=k), keys))


if __name__ == "__main__":
    main()
