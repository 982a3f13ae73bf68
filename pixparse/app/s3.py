"""Checkpoints and exports on S3 (or any S3-compatible store): copied to a local cache with boto3,
then loaded like local ones (the same safety checks apply).

The endpoint and credentials are boto3's own: AWS_ENDPOINT_URL (MinIO, Ceph, a local test
server), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, instance roles.
"""
import logging
import os
import uuid

from pixparse.models.safe_load import inside, plain_name

logger = logging.getLogger(__name__)


def split_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b')."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (s3://BUCKET/KEY)")
    return bucket, key.strip("/")


def _local_path(cache_dir: str, bucket: str, key: str, what: str) -> str:
    """<cache_dir>/<bucket>/<key>, each part of the key a plain name: a key with '..', an empty
    part or an absolute path is refused before anything is written."""
    parts = [bucket, *key.split("/")] if key else [bucket]
    for part in parts:
        plain_name(part, what)
    return inside(os.path.join(cache_dir, *parts), cache_dir, what)


def _client():
    try:
        import boto3
    except ImportError:
        raise ValueError("S3 checkpoints need boto3: pip install boto3 (or pip install -e '.[s3]')") from None
    return boto3.client("s3")


def _list(client, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under prefix/."""
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    return out


def fetch_checkpoint(uri: str, cache_dir: str) -> str:
    """Copy the checkpoint tag, checkpoint folder or export at `uri` to
    <cache_dir>/<bucket>/<key> and return that folder. A checkpoint folder (one holding a
    `latest` object) brings only the tag `latest` names. Files already cached with the same size
    are not fetched again; each file lands under its name only when complete."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_uri(uri)
    client = _client()
    try:
        try:
            latest = client.get_object(Bucket=bucket, Key=f"{key}/latest")["Body"].read().decode().strip()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            latest = None
        local_root = _local_path(cache_dir, bucket, key, uri)
        if latest:
            plain_name(latest, f"s3://{bucket}/{key}/latest")
            os.makedirs(local_root, exist_ok=True)
            with open(os.path.join(local_root, "latest"), "w") as f:
                f.write(latest + "\n")
            key = f"{key}/{latest}"
        objects = _list(client, bucket, key)
        if not objects:
            raise ValueError(f"{uri}: no objects under s3://{bucket}/{key}/ (a checkpoint tag, a checkpoint "
                             f"folder with `latest`, or an export folder)")
        fetched = 0
        for obj_key, size in objects:
            dest = _local_path(cache_dir, bucket, obj_key, f"s3://{bucket}/{obj_key}")
            if os.path.isfile(dest) and os.path.getsize(dest) == size:
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            partial = f"{dest}.{uuid.uuid4().hex}.partial"
            client.download_file(bucket, obj_key, partial)
            os.replace(partial, dest)
            fetched += 1
    except (BotoCoreError, ClientError) as e:
        raise ValueError(f"{uri}: {e}") from None
    logger.info("s3://%s/%s: %d file(s) fetched, %d cached, in %s", bucket, key, fetched,
                len(objects) - fetched, local_root)
    return local_root
