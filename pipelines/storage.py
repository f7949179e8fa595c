"""Local paths and `s3://` (any fsspec URL) handled the same way everywhere.

S3 settings come from the standard AWS environment / config files (credentials,
region, `AWS_ENDPOINT_URL`), plus an explicit endpoint URL option on the CLI for
S3-compatible stores (MinIO, moto, Ceph).
"""
from __future__ import annotations

import contextlib
import os

import fsspec
import pyarrow.fs as pafs

from cluster.errors import JobFailure

# Retries of every S3 call, in both clients (s3fs / botocore and pyarrow's own S3 client):
# AWS "standard" mode, exponential backoff with jitter, throttling (503 SlowDown) and
# connection errors retried.  The libraries' defaults were 5 (botocore legacy mode) and 3
# (pyarrow) attempts.  AWS_MAX_ATTEMPTS, the AWS SDKs' own setting, overrides the count.
S3_MAX_ATTEMPTS = 10


def s3_max_attempts() -> int:
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", S3_MAX_ATTEMPTS)))
    except ValueError:
        return S3_MAX_ATTEMPTS


class StorageError(JobFailure, OSError):
    """A storage call (S3, ...) that still failed after the retry policy: names the object.

    Transient by nature: a re-run retries it.  Still an OSError, for code that handles those.
    """


_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
              FileExistsError)


def is_transient(err: BaseException) -> bool:
    """True for a storage / network fault a re-run may not hit: a StorageError (the storage
    layer wraps remote faults into one) or a raw network error of the S3 client."""
    if isinstance(err, StorageError):
        return True
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return False
    return isinstance(err, BotoCoreError)


def _is_remote_fault(err: BaseException) -> bool:
    """A remote call's failure that is not 'no such object' (503s, resets, timeouts...)."""
    if isinstance(err, _PERMANENT):
        return False
    return isinstance(err, (OSError, TimeoutError)) or is_transient(err)


@contextlib.contextmanager
def storage_errors(action: str, uri: str):
    """Turn a transient fault on a remote `uri` into a StorageError that names it."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        if is_remote(uri) and _is_remote_fault(err):
            raise StorageError(f"{action} {uri} failed after {s3_max_attempts()} attempts "
                               f"({type(err).__name__}: {err}); a re-run retries it") from err
        raise


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path_resolved(uri: str) -> str:
    """A local path made absolute (with ~ expanded); URLs unchanged.

    Jobs resolve their paths before Ray starts: Ray workers run in folders of their own,
    where a relative path means somewhere else.
    """
    if is_remote(uri):
        return uri
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def endpoint_url(explicit: str | None = None) -> str | None:
    """The S3 endpoint to use: the explicit option, else the AWS environment, else AWS."""
    return explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def fsspec_filesystem(uri: str, s3_endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a local path or URL."""
    options = {}
    if uri.startswith("s3://"):
        url = endpoint_url(s3_endpoint_url)
        if url:
            options["client_kwargs"] = {"endpoint_url": url}
        options["config_kwargs"] = {"retries": {"mode": "standard", "max_attempts": s3_max_attempts()}}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    if uri.startswith("s3://"):
        # botocore's policy is THE retry policy: s3fs's own loop (5 tries of every call,
        # each with botocore's retries inside) would multiply it to 50 attempts.
        fs.retries = 1
    return fs, path


def arrow_filesystem(uri: str, s3_endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it): what Ray Data and Ray Train accept natively."""
    if uri.startswith("s3://"):
        url = endpoint_url(s3_endpoint_url)
        kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3_max_attempts())}
        if url:
            scheme, _, host = url.partition("://")
            kwargs.update(endpoint_override=host, scheme=scheme)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):]
    if is_remote(uri):
        fs, path = fsspec_filesystem(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def is_local_filesystem(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


TEMP_MARK = ".tmp-"


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` so that the file either exists complete or not at all.

    Local: write a hidden temp file in the same folder, then rename it (atomic on POSIX).
    Object stores (S3): a single PUT (or a multipart upload, completed only at the end) is
    already atomic, so the object is written in place.  An interrupted local write leaves
    only a hidden `.NAME.tmp-*` file, which Parquet readers ignore.
    """
    import posixpath
    import uuid

    if not is_local_filesystem(fs):
        with storage_errors("writing", fs.unstrip_protocol(path)):
            fs.pipe_file(path, data)
        return
    folder, name = posixpath.split(path)
    fs.makedirs(folder, exist_ok=True)
    temp = posixpath.join(folder, f".{name}{TEMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        fs.pipe_file(temp, data)
        # os.replace, not fs.mv: it is atomic, and it fails when `path` is a folder
        # instead of moving the file into it.
        os.replace(temp, path)
    except BaseException:
        if fs.exists(temp):
            fs.rm(temp)
        raise


def read_bytes(uri: str, s3_endpoint_url: str | None = None) -> bytes:
    """The whole content of a local file or object; FileNotFoundError names the URI."""
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    try:
        with storage_errors("reading", uri):
            return fs.cat_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"file not found: {uri}") from err


def write_bytes(uri: str, data: bytes, s3_endpoint_url: str | None = None) -> None:
    """Write a local file or object atomically (see `write_bytes_atomic`)."""
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    write_bytes_atomic(fs, path, data)
