"""Source separation with Demucs, through the `demucs` package's own API.

`--demucs-model` is either a pretrained name (``htdemucs``, ``htdemucs_ft``, ``hf://...``:
downloaded once into the torch hub cache, which needs internet) or a local model folder in
Demucs' local-repo format: ``<sig>.th`` / ``<sig>-<sha256 prefix>.th`` files made by
`demucs.states` (a dict with ``klass``, ``args``, ``kwargs``, ``state``) and optional
``<name>.yaml`` bags of models.  A folder with one model or one bag is used as is; otherwise
name the file (``FOLDER/htdemucs.yaml``, ``FOLDER/955717e8-8726e21a.th``).

Only the bass and drums sources are kept, as mono at the mel codec's sample rate.
"""
from __future__ import annotations

import fractions
import hashlib
import io
import os
from pathlib import Path

import torch

from cluster.errors import UserError

DEFAULT_MODEL = "htdemucs"
KEPT_SOURCES = ("bass", "drums")


class ModelSpecError(UserError):
    """--demucs-model names nothing Demucs can load, or a model without bass/drums sources."""


def resolve_model_spec(spec: str) -> tuple[str, Path | None]:
    """--demucs-model value -> (name or signature, local repo folder or None for pretrained)."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".th", ".yaml"):
            raise ModelSpecError(f"{spec}: a Demucs model file ends in .th (model) or .yaml (bag)")
        stem = path.stem
        if path.suffix == ".th" and "-" in stem:
            stem = stem.rsplit("-", 1)[0]  # <signature>-<checksum>.th
        return stem, path.parent
    if path.is_dir():
        bags = sorted(p.stem for p in path.glob("*.yaml"))
        models = sorted({p.stem.rsplit("-", 1)[0] if "-" in p.stem else p.stem for p in path.glob("*.th")})
        if len(bags) == 1:
            return bags[0], path
        if not bags and len(models) == 1:
            return models[0], path
        if not bags and not models:
            raise ModelSpecError(f"{spec}: no Demucs model (.th) or bag (.yaml) in this folder")
        raise ModelSpecError(
            f"{spec}: several models in this folder ({', '.join(bags + models)}); "
            "name one, e.g. FOLDER/NAME.yaml or FOLDER/SIG.th"
        )
    if os.sep in spec or spec.startswith("."):
        raise ModelSpecError(f"{spec}: no such model file or folder")
    return spec, None


def _model_classes() -> list:
    """The Demucs model classes a local .th file may name (its `klass`); nothing else loads."""
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return [Demucs, HDemucs, HTDemucs, fractions.Fraction]


def _safe_local_repo(root: Path):
    """Demucs' local repo (checksums, bags) with every .th file read weights-only."""
    from demucs.pretrained import AnyModelRepo, BagOnlyRepo, LocalRepo
    from demucs.repo import ModelLoadingError, check_checksum
    from demucs.states import load_model as model_from_package

    from pipelines.model_files import safe_torch_load

    class SafeLocalRepo(LocalRepo):
        def get_model(self, sig: str):
            try:
                file = self._models[sig]
            except KeyError:
                raise ModelLoadingError(f"Could not find pre-trained model with signature {sig}.")
            if sig in self._checksums:
                check_checksum(file, self._checksums[sig])
            package = safe_torch_load(file, allowed=_model_classes())
            if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= set(package):
                raise ModelSpecError(f"{file}: not a Demucs model file (klass, args, kwargs, state)")
            if package["klass"] not in _model_classes():
                raise ModelSpecError(f"{file}: not a Demucs model class: {package['klass']}")
            return model_from_package(package)

    models = SafeLocalRepo(root)
    return AnyModelRepo(models, BagOnlyRepo(root, models))


def load_model(spec: str):
    """Load a Demucs model or bag of models (in eval mode) that separates bass and drums.

    Local files are read weights-only (see `pipelines.model_files`): a .th file that would
    run code while loading is refused.  Pretrained names are fetched by Demucs from its
    own repository (checksummed downloads).
    """
    from demucs.pretrained import ModelLoadingError, get_model

    from pipelines.model_files import UnsafeModelFileError

    name, repo = resolve_model_spec(spec)
    try:
        model = get_model(name) if repo is None else _safe_local_repo(repo).get_model(name)
    except ModelLoadingError as err:  # unknown name, bad checksum
        raise ModelSpecError(f"{spec}: {err}") from err
    except UnsafeModelFileError as err:  # names the file and what it wanted to call
        raise ModelSpecError(str(err)) from err
    except SystemExit as err:  # demucs calls sys.exit through `fatal` on some errors
        raise ModelSpecError(f"{spec}: Demucs could not load the model") from err
    missing = [s for s in KEPT_SOURCES if s not in model.sources]
    if missing:
        raise ModelSpecError(f"{spec}: model has no {', '.join(missing)} source (has {model.sources})")
    return model.eval()


def check_model(spec: str) -> str:
    """Pre-flight for --demucs-model: a local model is loaded once now (safely), so a bad or
    unsafe file fails before Ray starts.  Returns the spec with a local path made absolute."""
    name, repo = resolve_model_spec(spec)
    if repo is None:
        return spec  # a pretrained name: Demucs downloads and checks it in the actors
    path = Path(spec).expanduser().resolve()
    load_model(str(path))
    return str(path)


@torch.no_grad()
def separate(model, wav: torch.Tensor, sample_rate: int, target_rate: int,
             device: str | torch.device = "cpu", shifts: int = 0) -> dict[str, torch.Tensor]:
    """[channels, samples] mix at `sample_rate` -> {'bass', 'drums'}: mono float32 [samples'] at
    `target_rate`, on the CPU.

    The track stays on the CPU; Demucs moves one segment at a time to `device`.  The mix is
    normalised as Demucs' own API does (zero mean, unit std of the mono reference) and the
    estimates scaled back, so levels match the input.  `shifts=0` keeps the result deterministic.
    """
    from demucs.apply import apply_model
    from demucs.audio import convert_audio

    from pipelines.audio import resample

    wav = convert_audio(wav.float(), sample_rate, model.samplerate, model.audio_channels)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    estimates = apply_model(model, ((wav - mean) / std)[None], shifts=shifts, split=True,
                            overlap=0.25, device=device, progress=False)[0]
    estimates = estimates * std + mean
    out = {}
    for name in KEPT_SOURCES:
        mono = resample(estimates[model.sources.index(name)].mean(0), model.samplerate, target_rate)
        out[name] = mono.contiguous().cpu()
    return out


# ----------------------------------------------------------------- test / benchmark models


def tiny_model(seed: int = 0):
    """A small randomly initialised Demucs (v2 waveform architecture, ~27k parameters).

    It separates nothing useful, but it has the real architecture, sources, sample rate and
    channel count, so everything around it (loading, segmenting, GPU placement) runs for real.
    """
    from demucs.demucs import Demucs

    torch.manual_seed(seed)
    return Demucs(sources=["drums", "bass", "other", "vocals"], channels=4, depth=4, segment=8)


def save_local_model(model, folder: str | os.PathLike, signature: str = "tiny") -> Path:
    """Save `model` in Demucs' local-repo format: FOLDER/<signature>-<sha256[:8]>.th.

    The file holds what `demucs.states.serialize_model` writes (minus the training config):
    the class, its constructor arguments (captured by Demucs' `capture_init`) and the state
    dict; `demucs.pretrained.get_model(signature, repo=FOLDER)` loads and checks it.
    """
    from demucs.states import get_state

    if "-" in signature:
        raise ValueError("a Demucs signature may not contain '-' (it separates the checksum)")
    args, kwargs = model._init_args_kwargs
    package = {"klass": model.__class__, "args": args, "kwargs": kwargs,
               "state": get_state(model, None, half=False), "training_args": {}}
    buf = io.BytesIO()
    torch.save(package, buf)
    data = buf.getvalue()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{signature}-{hashlib.sha256(data).hexdigest()[:8]}.th"
    path.write_bytes(data)
    return path
