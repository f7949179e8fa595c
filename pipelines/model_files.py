"""The one way this project reads a model file: `torch.load(weights_only=True)`.

A full pickle can run any code while it loads, so no model file (a checkpoint, a local
Demucs model, Inception weights) is ever unpickled in full.  Files that need classes
beyond tensors and containers (Demucs stores its model class) name those classes in
`allowed`, and nothing else is accepted.  A file that needs more is refused with a
message that names the file and what it asked for; its code never runs.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile

from cluster.errors import UserError


class UnsafeModelFileError(UserError):
    """A model file that cannot be read with weights only (corrupt, or it wants to run code)."""


# What a damaged or foreign file raises while loading (truncated zip, bad pickle, ...).
_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError,
                pickle.UnpicklingError, zipfile.BadZipFile)


def safe_torch_load(source: str | os.PathLike | bytes, name: str | None = None, allowed=()):
    """Load a torch file (path or bytes) with weights_only=True, allowing only `allowed` classes."""
    import torch

    if name is None:
        name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(err))
        if wanted:
            raise UnsafeModelFileError(
                f"{name}: refused: loading it would call {wanted.group(1)}; model "
                "files are read with weights only (tensors, containers and known model classes), "
                "so no code inside them runs") from err
        raise UnsafeModelFileError(f"{name}: not a readable torch file ({_first_line(err)})") from err
    except _LOAD_ERRORS as err:
        raise UnsafeModelFileError(
            f"{name}: not a readable torch file ({type(err).__name__}: {_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
