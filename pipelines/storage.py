"""Local paths and `s3://` (any fsspec URL) handled the same way everywhere.

S3 settings come from the standard AWS environment / config files (credentials,
region, `AWS_ENDPOINT_URL`), plus an explicit endpoint URL option on the CLI for
S3-compatible stores (MinIO, moto, Ceph).
"""
from __future__ import annotations

import os

import fsspec
import pyarrow.fs as pafs


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
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def arrow_filesystem(uri: str, s3_endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it): what Ray Data and Ray Train accept natively."""
    if uri.startswith("s3://"):
        url = endpoint_url(s3_endpoint_url)
        kwargs = {}
        if url:
            scheme, _, host = url.partition("://")
            kwargs = {"endpoint_override": host, "scheme": scheme}
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
        return fs.cat_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"file not found: {uri}") from err


def write_bytes(uri: str, data: bytes, s3_endpoint_url: str | None = None) -> None:
    """Write a local file or object atomically (see `write_bytes_atomic`)."""
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    write_bytes_atomic(fs, path, data)
