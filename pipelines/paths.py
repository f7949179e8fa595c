"""An OUTPUT must not land on an input: one check every job runs before Ray starts.

`overlap(a, b)` is a pure function on resolved locations (absolute local paths, or
`s3://bucket/prefix` strings); `check_output_outside_inputs` resolves the job's paths
(symbolic links followed for local ones) and raises `OutputOverlapsInput`, a one-line
user error, when the OUTPUT equals, is inside or contains one of its inputs.
"""
from __future__ import annotations

import os
import posixpath

from cluster.errors import UserError


class OutputOverlapsInput(UserError):
    """OUTPUT equals, is inside or contains one of the job's inputs."""


def _parts(location: str) -> tuple[str, tuple[str, ...]]:
    """(scheme, path components) of a resolved location; '.' and '..' and repeated or
    trailing slashes are normalised away."""
    if "://" in location:
        scheme, _, rest = location.partition("://")
        scheme = scheme.lower()
        if scheme == "file":
            return _parts(rest)
        rest = posixpath.normpath("/" + rest)
        return scheme, tuple(p for p in rest.split("/") if p)
    path = os.path.normpath(location)
    return "", tuple(p for p in path.split(os.sep) if p)


def overlap(a: str, b: str) -> str | None:
    """How location `a` relates to location `b`: 'equal', 'inside' (a is under b),
    'contains' (b is under a), or None (disjoint).  Whole path components are compared,
    so /a/b and /a/bc are disjoint; a local path and an s3:// prefix never overlap."""
    scheme_a, parts_a = _parts(a)
    scheme_b, parts_b = _parts(b)
    if scheme_a != scheme_b:
        return None
    if parts_a == parts_b:
        return "equal"
    n = min(len(parts_a), len(parts_b))
    if parts_a[:n] != parts_b[:n]:
        return None
    return "inside" if len(parts_a) > len(parts_b) else "contains"


def resolved_location(uri: str) -> str:
    """A local path made absolute with symbolic links resolved (as far as they exist);
    a URL with its trailing slashes removed."""
    if "://" in uri and not uri.startswith("file://"):
        return uri.rstrip("/")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.realpath(os.path.expanduser(path))


_RELATION = {"equal": "is", "inside": "is inside", "contains": "contains"}


def check_output_outside_inputs(output: str, inputs: dict[str, str | list[str] | None],
                                what: str = "OUTPUT") -> None:
    """Raise OutputOverlapsInput when `output` equals, is inside or contains an input.

    `inputs` maps each input's name in the message (e.g. "INPUT", "CHECKPOINT") to a
    location, a list of them, or None (an option left unset)."""
    out = resolved_location(output)
    for name, uris in inputs.items():
        for uri in [uris] if isinstance(uris, str) else (uris or []):
            relation = overlap(out, resolved_location(uri))
            if relation:
                raise OutputOverlapsInput(
                    f"{what} {output} {_RELATION[relation]} {name} {uri}: the job would write into its "
                    f"own input; give {what} a folder outside it")
