"""What the S3 tests do to a bucket from outside Sovryn, with boto3 (the
client moto ships with): create it, list it, read and replace objects.

    bucket.py ENDPOINT create BUCKET
    bucket.py ENDPOINT list BUCKET            -> one key per line
    bucket.py ENDPOINT du BUCKET              -> the bytes of every object together
    bucket.py ENDPOINT dump BUCKET DIR        -> every object into DIR (keys as paths)
    bucket.py ENDPOINT flip BUCKET KEY OFFSET -> flips one bit of an object
"""

import os
import sys

import boto3


def main():
    endpoint, cmd, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test-access",
        aws_secret_access_key="test-secret",
        region_name="us-east-1",
    )
    if cmd == "create":
        s3.create_bucket(Bucket=bucket)
    elif cmd in ("list", "dump", "du"):
        keys, size = [], 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [o["Key"] for o in page.get("Contents", [])]
            size += sum(o["Size"] for o in page.get("Contents", []))
        if cmd == "du":
            print(size)
        elif cmd == "list":
            print("\n".join(keys))
        else:
            out = sys.argv[4]
            for k in keys:
                path = os.path.join(out, k)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
    elif cmd == "flip":
        key, offset = sys.argv[4], int(sys.argv[5])
        body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[offset] ^= 0x01
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
