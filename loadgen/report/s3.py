"""Reports in S3: ``s3://BUCKET/KEY`` URLs, and reading, writing and listing them
through boto3 with its standard credential chain (environment, ~/.aws, a pod's
web identity, an instance role). ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
points it at another S3 (MinIO, moto). Whatever a user can get wrong (the URL,
the bucket, the credentials) is one line naming the option and the URL."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadgen.aws.account import check_endpoint, error_code, open_session
from loadgen.errors import LoadgenError, OutputError, UserError
from loadgen.files import REPORT_LIMIT, too_large

SCHEME = "s3://"
# S3's rules for a bucket name (3 to 63 lowercase letters, digits, dots and
# hyphens, a letter or digit at each end): anything else never reaches S3.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_BYTES = 1024
# A check before a run is worth less than a long wait: few attempts, short
# timeouts. Writing a run's results is worth more: botocore's standard retries.
_CHECK = {"retries": {"mode": "standard", "total_max_attempts": 2}, "connect_timeout": 5}
_TRANSFER = {"retries": {"mode": "standard", "total_max_attempts": 5}, "connect_timeout": 10}


@dataclass(frozen=True)
class S3Url:
    """An object (``key``) or, when the key is empty or ends with ``/``, every
    object under a prefix."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def name(self) -> str:
        """The last part of the key, as a file's name."""
        return self.key.rstrip("/").rpartition("/")[2]


def is_url(text: str) -> bool:
    return text.startswith(SCHEME)


def parse(text: str, option: str) -> S3Url:
    bucket, _, key = text.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise UserError(f"{option} {text}: no bucket (s3://BUCKET/KEY)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UserError(
            f"{option} {text}: {bucket!r} is not an S3 bucket name "
            "(3 to 63 lowercase letters, digits, dots and hyphens)"
        )
    if len(key.encode()) > _KEY_BYTES:
        raise UserError(f"{option} {text[:60]}…: a key longer than S3's {_KEY_BYTES:,} bytes")
    return S3Url(bucket, key)


def parse_object(text: str, option: str) -> S3Url:
    """A URL a file is written to: a bucket and a key that is not a prefix."""
    url = parse(text, option)
    if url.is_prefix:
        raise UserError(f"{option} {text}: give the object's key too (s3://BUCKET/KEY)")
    return url


class S3Unavailable(UserError):
    """S3 did not answer, or answered that it cannot now (a 5xx, throttling):
    what may pass, unlike a missing bucket or refused credentials."""


# Codes S3 (and MinIO) answer when it is the service, not the request.
_TRANSIENT_CODES = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
     "RequestTimeout", "Throttling", "ThrottlingException"}
)  # fmt: skip


def transient(exc: BaseException) -> bool:
    import botocore.exceptions as errors

    if isinstance(exc, errors.EndpointConnectionError | errors.ConnectTimeoutError):
        return True
    if isinstance(exc, errors.ReadTimeoutError | errors.ConnectionClosedError):
        return True
    return error_code(exc) in _TRANSIENT_CODES


class S3:
    """One boto3 client (made when first needed) for the URLs of one option, whose
    name its errors carry."""

    def __init__(self, option: str, *, check: bool = False) -> None:
        self.option = option
        self._config = _CHECK if check else _TRANSFER

    @functools.cached_property
    def _client(self) -> Any:
        import botocore.config

        session = open_session(where=f"{self.option}: ")
        check_endpoint("s3", None, "", where=f"{self.option}: ")
        if session.get_credentials() is None:
            raise UserError(
                f"{self.option}: no AWS credentials found (environment, ~/.aws, "
                "a web identity token or an instance role)"
            )
        s3 = {}
        if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
            # MinIO and moto answer at one host: a bucket's own host name
            # (virtual-hosted style) would not resolve.
            s3 = {"addressing_style": "path"}
        config = botocore.config.Config(**self._config, read_timeout=60, s3=s3)
        return session.client("s3", config=config)

    def check_bucket(self, url: S3Url, warn: Any = None) -> None:
        """Refuse a bucket that does not exist or cannot be reached, and
        credentials S3 refuses. A bucket whose listing is denied may still take
        the write (a role allowed only PutObject): ``warn`` is told, no more."""
        client = self._client
        try:
            client.head_bucket(Bucket=url.bucket)
        except Exception as exc:
            code = error_code(exc)
            if code in ("403", "AccessDenied") and warn is not None:
                warn(
                    f"{self.option} {url}: cannot check bucket {url.bucket} (access denied); "
                    "the write at the end may fail"
                )
                return
            raise self._error(exc, url, UserError) from None

    def put(self, url: S3Url, data: bytes, content_type: str) -> None:
        client = self._client
        try:
            client.put_object(Bucket=url.bucket, Key=url.key, Body=data, ContentType=content_type)
        except Exception as exc:
            raise self._error(exc, url, OutputError, "cannot write: ") from None

    def get(self, url: S3Url) -> bytes:
        client = self._client
        try:
            body = client.get_object(Bucket=url.bucket, Key=url.key)["Body"]
            # As a report file is read: no more than the limit, whatever the object holds.
            data: bytes = body.read(REPORT_LIMIT + 1)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise UserError(f"{url}: no such report (a prefix ends with /)") from None
            raise self._error(exc, url, UserError, "cannot read: ") from None
        if len(data) > REPORT_LIMIT:
            raise too_large(url, REPORT_LIMIT, "report")
        return data

    def etag(self, url: S3Url) -> str | None:
        """The object's ETag (it changes when the object is written again), or
        None when there is no such object."""
        client = self._client
        try:
            head = client.head_object(Bucket=url.bucket, Key=url.key)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._error(exc, url, UserError, "cannot read: ") from None
        return str(head.get("ETag", ""))

    def listing(self, prefix: S3Url) -> Iterator[tuple[S3Url, str]]:
        """Every object under ``prefix``, with its ETag (it changes when the
        object is written again)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=prefix.bucket, Prefix=prefix.key
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield S3Url(prefix.bucket, item["Key"]), str(item.get("ETag", ""))
        except Exception as exc:
            raise self._error(exc, prefix, UserError, "cannot list: ") from None

    def _error(
        self, exc: BaseException, url: S3Url, kind: type[LoadgenError], doing: str = ""
    ) -> LoadgenError:
        if kind is UserError and transient(exc):
            kind = S3Unavailable
        return kind(f"{self.option} {url}: {doing}{describe(exc, url)}")


def describe(exc: BaseException, url: S3Url) -> str:
    """What went wrong, in a phrase (botocore's messages run long)."""
    import botocore.exceptions as errors

    if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
        return "no AWS credentials found (environment, ~/.aws, a web identity token or a role)"
    if isinstance(exc, errors.EndpointConnectionError | errors.ConnectTimeoutError):
        return f"cannot reach S3 ({exc})"
    if isinstance(exc, errors.ReadTimeoutError):
        return "S3 did not answer in time"
    code = error_code(exc)
    if code in ("NoSuchBucket", "404"):
        return f"no such bucket {url.bucket}"
    if code in ("403", "AccessDenied"):
        return f"access denied to bucket {url.bucket}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return f"S3 refused the AWS credentials ({code})"
    if code is not None:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message") or ""
        return f"S3 said {code}{': ' + message if message else ''}"
    return f"{type(exc).__name__}: {exc}"
