"""Local paths and `s3://` (any fsspec URL) handled the same way everywhere.

S3 settings come from the standard AWS environment / config files (credentials,
region, `AWS_ENDPOINT_URL`), plus an explicit endpoint URL option on the CLI for
S3-compatible stores (MinIO, moto, Ceph).
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import time
from typing import Callable, TypeVar

import fsspec
import pyarrow.fs as pafs

from cluster.errors import JobFailure

T = TypeVar("T")

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


def _body_fault_types() -> tuple[type[BaseException], ...]:
    """The errors of a connection lost while a response's body is read (a reset after the
    status line and headers, half the body in): raised past the S3 clients' retry loops,
    which cover the request and its status line only."""
    import http.client

    types: list[type[BaseException]] = [ConnectionError, http.client.IncompleteRead]
    try:
        import aiohttp

        types += [aiohttp.ClientPayloadError, aiohttp.ClientConnectionError]
    except ImportError:  # pragma: no cover - s3fs brings aiohttp
        pass
    try:
        from botocore.exceptions import ResponseStreamingError

        types.append(ResponseStreamingError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from urllib3.exceptions import IncompleteRead, ProtocolError

        types += [IncompleteRead, ProtocolError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def is_body_fault(err: BaseException) -> bool:
    """True for a connection lost in the middle of a response body (see `_body_fault_types`)."""
    return isinstance(err, _body_fault_types())


def is_transient(err: BaseException) -> bool:
    """True for a storage / network fault a re-run may not hit: a StorageError (the storage
    layer wraps remote faults into one), a raw network error of the S3 client, or a
    connection lost in the middle of a response body."""
    if isinstance(err, StorageError) or is_body_fault(err):
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


RETRY_HINT = "a re-run retries it"


def _storage_error(action: str, uri: str, err: BaseException) -> StorageError | None:
    """The StorageError naming `uri` that a transient fault on it becomes; None for others."""
    if isinstance(err, StorageError):
        return err
    if is_remote(uri) and _is_remote_fault(err):
        detail = " ".join(f"{type(err).__name__}: {err}".split())  # one line
        return StorageError(f"{action} {uri} failed after {s3_max_attempts()} attempts "
                            f"({detail}); {RETRY_HINT}")
    return None


_FAULT_TEXT = re.compile(r" failed after \d+ attempts \(.*\); " + re.escape(RETRY_HINT))


def is_storage_fault_text(text: str) -> bool:
    """Does an error text (a stage's error row, which keeps errors as text) carry a
    StorageError's message?"""
    return bool(_FAULT_TEXT.search(text))


@contextlib.contextmanager
def storage_errors(action: str, uri: str):
    """Turn a transient fault on a remote `uri` into a StorageError that names it."""
    try:
        yield
    except Exception as err:
        wrapped = _storage_error(action, uri, err)
        if wrapped is None or wrapped is err:
            raise
        raise wrapped from err


def backoff_seconds(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...): full jitter over an exponential
    cap, as the AWS standard retry mode does (here from 0.2 s, at most 20 s)."""
    return random.uniform(0.0, min(20.0, 0.2 * 2 ** attempt))


def retried_read(action: str, uri: str, read: Callable[[], T]) -> T:
    """`read()` (a whole read of the object `uri`: request AND body) with the S3 retry budget.

    The S3 clients retry a request until its status line; a connection lost in the middle
    of the body (aiohttp's ClientPayloadError, a reset, an incomplete read) escapes them.
    Such a fault here re-runs the whole read, up to `s3_max_attempts()` reads in all, with
    backoff.  A remote fault that is left becomes a StorageError naming `uri` (a JobFailure:
    the job exits 1; a re-run retries it).  Local paths are read once, unchanged.
    """
    if not is_remote(uri):
        return read()
    attempts = s3_max_attempts()
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except Exception as err:
            if is_body_fault(err) and attempt < attempts:
                time.sleep(backoff_seconds(attempt))
                continue
            wrapped = _storage_error(action, uri, err)
            if wrapped is None or wrapped is err:
                raise
            raise wrapped from err
    raise AssertionError("unreachable")  # pragma: no cover


STORAGE_ERROR_MARK = "StorageError: "


def storage_fault_in(err: BaseException) -> StorageError | None:
    """The StorageError behind an error Ray raised on the driver, if any.

    Ray Data re-raises a task's or actor's exception as its own (`UserCodeException`),
    with the original only as text in its traceback; this finds a StorageError there (or
    in the exception chain) and gives back one with its one-line message."""
    seen, stack = set(), [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) is StorageError:
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    text = str(err)
    if STORAGE_ERROR_MARK in text:
        return StorageError(text.rsplit(STORAGE_ERROR_MARK, 1)[1].strip().splitlines()[0])
    return None


@contextlib.contextmanager
def storage_faults_in_ray():
    """Around a job's collection on the driver: a StorageError raised in a Ray task or actor
    (which Ray Data re-raises inside a long traceback) becomes that one-line StorageError,
    so the CLI prints it and exits 1; any other error passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        found = storage_fault_in(err)
        if found is None:
            raise
        raise StorageError(str(found)) from err


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
    if not is_local_filesystem(fs):
        with storage_errors("writing", fs.unstrip_protocol(path)):
            fs.pipe_file(path, data)
        return
    _replace_locally(fs, path, lambda temp: fs.pipe_file(temp, data))


def _replace_locally(fs: fsspec.AbstractFileSystem, path: str, write: Callable[[str], None]) -> None:
    """`write(temp)` a hidden temp file beside local `path`, then rename it onto `path`."""
    import posixpath
    import uuid

    folder, name = posixpath.split(path)
    fs.makedirs(folder, exist_ok=True)
    temp = posixpath.join(folder, f".{name}{TEMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        write(temp)
        # os.replace, not fs.mv: it is atomic, and it fails when `path` is a folder
        # instead of moving the file into it.
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def read_bytes(uri: str, s3_endpoint_url: str | None = None) -> bytes:
    """The whole content of a local file or object; FileNotFoundError names the URI.

    The read (request and body) is retried as a whole (`retried_read`); a fault that is left
    is a StorageError naming the object."""
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    try:
        return retried_read("reading", uri, lambda: fs.cat_file(path))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"file not found: {uri}") from err


def write_bytes(uri: str, data: bytes, s3_endpoint_url: str | None = None) -> None:
    """Write a local file or object atomically (see `write_bytes_atomic`)."""
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    write_bytes_atomic(fs, path, data)


def write_file(uri: str, local_path: str, s3_endpoint_url: str | None = None) -> None:
    """Copy a local file to a local path or object, atomically (as `write_bytes_atomic`) and without
    reading it into memory: S3 gets a multipart upload, completed only at the end."""
    import shutil

    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    if not is_local_filesystem(fs):
        with storage_errors("writing", uri):
            fs.put_file(local_path, path)
        return
    _replace_locally(fs, path, lambda temp: shutil.copyfile(local_path, temp))
