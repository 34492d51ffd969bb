"""The S3 store: ``url`` images (and generic objects) in an S3-compatible bucket (AWS S3, MinIO,
SeaweedFS, Cloudflare R2...), so that every replica's links work everywhere.

Layout and names follow ``rules.py`` under ``<prefix>``: images at ``<prefix><name>``, generic
objects at ``<prefix>objects/<key>``. A ``url`` response is a presigned GET (SigV4) valid for the
TTL: the client downloads from the bucket, never from us, so ``open`` always answers None.

Credentials come from boto3's default chain only (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and ``~/.aws/*``, web identity, container or instance roles); the server has no
credential settings of its own. Links signed with temporary credentials (roles) stop working
when those credentials expire, even before the TTL.

Expiry: a link expires by itself (``X-Amz-Expires`` = TTL). The objects are deleted by the
server's periodic sweep (``cleanup``: list the prefix, delete what is ours and older than the
TTL) unless ``sweep=False``; a bucket lifecycle rule on the prefix is the backstop for objects
no running replica sweeps any more (docs/scaling.md, "`url` images on S3"). ``get_object``
never returns an expired object, whatever the sweep did.

Every method blocks on the network (except ``link``, which signs locally): callers run them in
an executor. boto3 is imported here only, when S3 is configured.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from . import rules

log = logging.getLogger("server.storage")

#: SigV4 caps a presigned link's lifetime at 7 days
MAX_LINK_TTL_S = 7 * 24 * 3600
#: DeleteObjects takes at most this many keys per call
_DELETE_BATCH = 1000


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        ttl_s: int,
        *,
        endpoint_url: str | None = None,
        link_endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        sweep: bool = True,
    ) -> None:
        """No request is made here (``check`` is the startup probe). ``prefix`` is "" or ends
        with "/"; ``ttl_s`` is 1..``MAX_LINK_TTL_S``; ``link_endpoint_url`` is the endpoint written into links when clients reach
        the store at another address than the server does (default: ``endpoint_url``)."""
        import boto3  # only when S3 is configured: the local store needs no AWS SDK
        from botocore.config import Config

        self.bucket, self.prefix, self.ttl_s, self.sweep = bucket, prefix, ttl_s, sweep
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
            # botocore's default CRC checksums on every request are refused by some
            # S3-compatible stores; the checksums S3 itself requires are still sent
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()  # one client, shared by threads (clients are safe)
        self._s3 = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        # Presigning is local: a second client only to write another host into the links
        self._signer = self._s3
        if link_endpoint_url and link_endpoint_url != endpoint_url:
            self._signer = session.client(
                "s3", endpoint_url=link_endpoint_url, region_name=region, config=config
            )

    def check(self) -> None:
        """Fail at startup, naming the bucket, when it is unreachable or not ours to use."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise RuntimeError(
                f"S3 bucket {self.bucket!r} at {self._s3.meta.endpoint_url} is not usable: "
                f"{exc}. Check --s3-bucket, --s3-endpoint-url, --s3-region and the AWS "
                "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)."
            ) from None

    # ------------------------------------------------------------------ url images
    def put(self, data: bytes, fmt: str) -> str:
        """Upload encoded image bytes with their Content-Type; return the name ``<id>.<fmt>``."""
        name = rules.new_name(fmt)
        self._put(self.prefix + name, data, rules.CONTENT_TYPES[fmt])
        return name

    def link(self, name: str, base_url: str) -> str:
        """A presigned GET of the image, valid for the TTL (``base_url`` is not used: the
        link points at the bucket)."""
        if rules.name_content_type(name) is None:
            raise ValueError(f"not an image name: {name[:80]!r}")
        return self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.prefix + name},
            ExpiresIn=self.ttl_s,
        )

    def open(self, name: str) -> None:
        """Always None: S3 links point at the bucket, so nothing is served from this server."""
        return None

    # ------------------------------------------------------------------ generic objects
    def put_object(self, key: str, data: bytes, content_type: str) -> None:
        self._put(
            self.prefix + rules.object_path(key), data, rules.check_content_type(content_type)
        )

    def get_object(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None if missing or expired (an expired one is deleted)."""
        full = self.prefix + rules.object_path(key)
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=full)
        except self._s3.exceptions.NoSuchKey:
            return None
        with got["Body"] as body:
            if self._expired(got["LastModified"]):
                self._s3.delete_object(Bucket=self.bucket, Key=full)
                return None
            return body.read()

    def open_object(self, key: str):
        """``(body, size)``: the object's streaming body (``read(n)``, ``close()``) and its
        length, or None if missing or expired (an expired one is deleted)."""
        full = self.prefix + rules.object_path(key)
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=full)
        except self._s3.exceptions.NoSuchKey:
            return None
        if self._expired(got["LastModified"]):
            got["Body"].close()
            self._s3.delete_object(Bucket=self.bucket, Key=full)
            return None
        return got["Body"], int(got["ContentLength"])

    def delete_object(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + rules.object_path(key))

    # ------------------------------------------------------------------ upkeep
    def cleanup(self) -> int:
        """Delete expired objects of ours under the prefix; return how many. A failure (network,
        no s3:ListBucket/DeleteObject permission) is logged and ends this sweep early."""
        if not self.sweep:
            return 0
        from botocore.exceptions import BotoCoreError, ClientError

        removed = 0
        try:
            batch: list[dict] = []
            pages = self._s3.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", ()):
                    rel = obj["Key"][len(self.prefix) :]
                    if rules.is_ours(rel) and self._expired(obj["LastModified"]):
                        batch.append({"Key": obj["Key"]})
                    if len(batch) == _DELETE_BATCH:
                        removed += self._delete(batch)
                        batch = []
            if batch:
                removed += self._delete(batch)
        except (BotoCoreError, ClientError) as exc:
            log.warning("sweep of s3://%s/%s stopped: %s", self.bucket, self.prefix, exc)
        return removed

    def close(self) -> None:
        self._s3.close()
        if self._signer is not self._s3:
            self._signer.close()

    # ------------------------------------------------------------------ helpers
    def _put(self, key: str, data: bytes, content_type: str) -> None:
        self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            # as the local files route: caches may keep it no longer than the link lives
            CacheControl=f"private, max-age={self.ttl_s}",
        )

    def _delete(self, batch: list[dict]) -> int:
        out = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        for err in out.get("Errors", ()):
            log.warning("could not delete s3://%s/%s: %s", self.bucket, err["Key"], err)
        return len(batch) - len(out.get("Errors", ()))

    def _expired(self, last_modified: datetime) -> bool:
        return rules.expired(time.time() - last_modified.timestamp(), self.ttl_s)
