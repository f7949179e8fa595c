"""The Ray Data stages of `cycledrums score`: reference rows, features (+ baselines), Inception.

  reference (CPU tasks)  Parquet test windows, or reference audio files -> mel images of
                         the true drums, the bass, and another clip's drums (for the
                         other-clip baseline)
  features (CPU tasks)   per reference clip: one "real" row, one "generated" row per
                         generated clip matched to it (decoded, mel features), and one
                         "baseline" row per baseline (infer.baselines)
  Inception (actor pool) pooled activations of every row's image
On a CPU cluster the features stage runs inside the Inception actors (one per core).
"""
from __future__ import annotations

import time

import numpy as np

from infer.features import RHYTHM_FEATURES, SCALAR_FEATURES, stoi_names
from infer.inception import LAYERS
from pipelines.storage import read_bytes

REFERENCE_LABEL = "reference"
DENSITY_FEATURES = tuple(f"density_{layer}" for layer in LAYERS)
REF_COLUMNS = ("clip_id", "ref_image", "bass_image", "other_image", "other_id", "ref_error", "ref_seconds")


def mel_feature_names(n_mels: int = 256) -> list[str]:
    return stoi_names(n_mels) + list(SCALAR_FEATURES)


def load_mel_image(uri: str, params, s3_endpoint_url: str | None = None) -> np.ndarray:
    """Audio file (local or URL) -> uint8 mel image [n_mels, frames]; silence allowed (it is a valid clip)."""
    return mel_image_from_bytes(read_bytes(uri, s3_endpoint_url), uri, params)


def mel_image_from_bytes(data: bytes, name: str, params) -> np.ndarray:
    """Audio file bytes -> uint8 mel image, exactly as `load_mel_image` analyses a file."""
    import io

    from pipelines.audio import load_audio
    from pipelines.mel import audio_to_image

    from infer.sources import check_long_enough

    f = io.BytesIO(data)
    f.name = name  # for error messages
    audio = load_audio(f, params.sample_rate, allow_silent=True)
    check_long_enough(audio, params, name)
    return audio_to_image(audio, params).numpy()


def image_bytes(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def image_from_bytes(data: bytes, n_mels: int) -> np.ndarray:
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n_mels, -1)  # writable for torch


def _columns(out: dict) -> dict:
    result = {k: np.array(v, dtype=object) for k, v in out.items()}
    result["ref_seconds"] = np.array(out["ref_seconds"], dtype=np.float64)
    return result


# ---------------------------------------------------------------- reference


def parquet_reference_batch(batch, params_dict: dict, baselines: bool, seed: int) -> dict:
    """Parquet test windows (pyarrow batch) -> reference rows; the other-clip partner is from the batch."""
    from pipelines.mel import MelParams
    from pipelines.windows import binary_to_images

    from infer.baselines import derangement, stable_seed
    from pipelines.clip_ids import window_clip_id

    params = MelParams.from_dict(params_dict)
    start = time.perf_counter()
    batch = batch.filter([s == "test" for s in batch.column("split").to_pylist()])
    drums = [image_bytes(x) for x in binary_to_images(batch.column("drums"), params)]
    bass = [image_bytes(x) for x in binary_to_images(batch.column("bass"), params)]
    ids = [window_clip_id(t, w) for t, w in zip(batch.column("track_id").to_pylist(),
                                                batch.column("window").to_pylist())]
    n = len(ids)
    other, other_ids = [b""] * n, [""] * n
    if baselines and n >= 2:  # another window of the batch: real drums, wrong part
        partner = derangement(n, stable_seed(seed, ids[0], "other-clip"))
        other, other_ids = [drums[j] for j in partner], [ids[j] for j in partner]
    seconds = (time.perf_counter() - start) / max(1, n)
    return _columns({"clip_id": ids, "ref_image": drums, "bass_image": bass, "other_image": other,
                     "other_id": other_ids, "ref_error": [""] * n, "ref_seconds": [seconds] * n})


def audio_reference_rows(audio_rows: list[dict], baselines: bool, seed: int) -> list[dict]:
    """Reference audio rows (clip_id, drums_uri, bass_uri) + the other-clip baseline's partners:
    other_id / other_uri (a seeded derangement of the clips) and `other_fallbacks`, JSON
    [[clip_id, drums_uri], ...] tried in order when the partner's drums cannot be decoded."""
    import json

    rows = [dict(r, other_id="", other_uri="", other_fallbacks="[]") for r in audio_rows]
    if baselines and len(rows) >= 2:
        from infer.baselines import partner_candidates

        for row, candidates in zip(rows, partner_candidates([r["clip_id"] for r in rows], seed)):
            partners = [[audio_rows[j]["clip_id"], audio_rows[j]["drums_uri"]] for j in candidates]
            row.update(other_id=partners[0][0], other_uri=partners[0][1],
                       other_fallbacks=json.dumps(partners[1:]))
    return rows


def audio_reference_batch(batch: dict, params_dict: dict, s3_endpoint_url: str | None) -> dict:
    """Reference audio rows (`audio_reference_rows`) -> rows with mel images.

    Each file is decoded on its own (once per batch): a bad drums or bass file is its own
    clip's `ref_error`; a partner whose drums cannot be decoded is replaced by the next of
    `other_fallbacks` (no usable one: no other-clip baseline for that clip)."""
    import json

    from pipelines.audio import AudioError
    from pipelines.mel import MelParams

    params = MelParams.from_dict(params_dict)
    decoded: dict[str, tuple[bytes, str]] = {}  # uri -> (image, error)

    def decode(uri: str) -> tuple[bytes, str, float]:
        """(image, error, seconds spent now: 0 when this batch decoded the file already)."""
        if uri in decoded:
            return (*decoded[uri], 0.0)
        start = time.perf_counter()
        try:
            decoded[uri] = (image_bytes(load_mel_image(uri, params, s3_endpoint_url)), "")
        except (AudioError, FileNotFoundError, OSError) as err:
            decoded[uri] = (b"", str(err))
        return (*decoded[uri], time.perf_counter() - start)

    out = {k: [] for k in REF_COLUMNS}
    n = len(batch["clip_id"])
    fallbacks = batch["other_fallbacks"] if "other_fallbacks" in batch else ["[]"] * n
    for clip_id, drums_uri, bass_uri, other_id, other_uri, more in zip(
            batch["clip_id"], batch["drums_uri"], batch["bass_uri"], batch["other_id"], batch["other_uri"],
            fallbacks):
        images, errors, seconds = {"ref_image": b"", "bass_image": b"", "other_image": b""}, [], 0.0
        for key, uri in (("ref_image", drums_uri), ("bass_image", bass_uri)):
            if uri:
                images[key], error, spent = decode(uri)
                seconds += spent
                if error:
                    errors.append(error)
        partner = ""
        if not errors and other_uri:
            for candidate_id, uri in [[other_id, other_uri]] + json.loads(str(more)):
                image, error, spent = decode(uri)
                seconds += spent
                if not error:
                    images["other_image"], partner = image, candidate_id
                    break
        out["clip_id"].append(clip_id)
        out["other_id"].append(partner)
        for key, value in images.items():
            out[key].append(value if not errors else b"")
        out["ref_error"].append(f"reference: {errors[0]}" if errors else "")
        out["ref_seconds"].append(seconds)
    return _columns(out)


# ---------------------------------------------------------------- features


def clip_features(generated_mel: np.ndarray, true_mel: np.ndarray, bass_mel: np.ndarray | None,
                  params) -> np.ndarray:
    """All mel-domain features of one clip, in `mel_feature_names` order."""
    import torch

    from pipelines.mel import dequantize

    from infer.features import level_diff_db, rhythm_features, spectrum_match, stoi_like, stoi_mean

    def db(image):
        return dequantize(torch.from_numpy(np.ascontiguousarray(image)), params).numpy().astype(np.float64)

    gen, true = db(generated_mel), db(true_mel)
    bass = db(bass_mel) if bass_mel is not None else None
    stoi = stoi_like(true, gen)
    rhythm = rhythm_features(gen, true, bass, params.sample_rate / params.hop_length, params.sample_rate)
    scalars = [stoi_mean(stoi, true), level_diff_db(gen, true), spectrum_match(gen, true)] + \
        [rhythm[k] for k in RHYTHM_FEATURES]
    return np.concatenate([stoi, scalars]).astype(np.float32)


def drums_active(true_mel: np.ndarray) -> bool:
    """Do the true drums play at all in this clip (some mel row changes over time)?"""
    from infer.features import active_bins

    return bool(active_bins(true_mel.astype(np.float64)).any())


class _Rows:
    """Accumulates the features stage's output rows."""

    KEYS = ("kind", "set", "clip_id", "reference_id", "generated", "image", "error", "features",
            "seconds_features", "drums_active")

    def __init__(self, n_features: int):
        self.n_features = n_features
        self.out = {k: [] for k in self.KEYS}

    def emit(self, kind, label, clip_id, reference_id, uri, image, error, features=None, seconds=0.0,
             active=False):
        values = (kind, label, clip_id, reference_id, uri, image, error,
                  features if features is not None else np.zeros(self.n_features, np.float32), seconds, active)
        for k, v in zip(self.KEYS, values):
            self.out[k].append(v)

    def columns(self) -> dict:
        result = {k: np.array(v, dtype=object) for k, v in self.out.items()
                  if k not in ("features", "seconds_features", "drums_active")}
        result["features"] = np.stack(self.out["features"]).astype(np.float32) if self.out["features"] \
            else np.zeros((0, self.n_features), np.float32)
        result["seconds_features"] = np.array(self.out["seconds_features"], dtype=np.float64)
        result["drums_active"] = np.array(self.out["drums_active"], dtype=bool)
        return result


def features_batch(batch: dict, lookup: dict, params_dict: dict, s3_endpoint_url: str | None,
                   baselines: bool, seed: int) -> dict:
    """Reference rows -> a 'real' row each, a 'generated' row per matched generated clip, baseline rows."""
    from pipelines.mel import MelParams

    params = MelParams.from_dict(params_dict)
    return clip_rows(batch, lookup, params, baselines, seed,
                     lambda i, label, uri: load_mel_image(uri, params, s3_endpoint_url))


def clip_rows(batch: dict, lookup: dict, params, baselines: bool, seed: int, generated_image) -> dict:
    """features_batch's work; `generated_image(row index, set label, uri)` gives a generated clip's
    mel image (or raises AudioError / OSError): read from a file by score, made in the job by evaluate."""
    from pipelines.audio import AudioError

    from infer.baselines import OTHER, TRUE, baseline_images

    rows = _Rows(len(mel_feature_names(params.n_mels)))
    for i, (clip_id, ref_b, bass_b, other_b, other_id, ref_error, ref_seconds) in enumerate(
            zip(*(batch[k] for k in REF_COLUMNS))):
        rows.emit("real", REFERENCE_LABEL, clip_id, clip_id, "", ref_b, ref_error)
        if ref_error:
            for label, uri, gen_id in lookup.get(clip_id, ()):
                rows.emit("generated", label, gen_id, clip_id, uri, b"", f"no usable reference ({ref_error})")
            continue
        true = image_from_bytes(ref_b, params.n_mels)
        bass = image_from_bytes(bass_b, params.n_mels) if bass_b else None
        active = drums_active(true)
        for label, uri, gen_id in lookup.get(clip_id, ()):
            start = time.perf_counter()
            try:
                gen = generated_image(i, label, uri)
            except (AudioError, FileNotFoundError, OSError) as err:
                rows.emit("generated", label, gen_id, clip_id, uri, b"", str(err))
                continue
            features = clip_features(gen, true, bass, params)
            # The clip's share of the work: its own decode + features, and its reference's decode.
            rows.emit("generated", label, gen_id, clip_id, uri, image_bytes(gen), "", features,
                      time.perf_counter() - start + float(ref_seconds), active)
        if not baselines:
            continue
        other = image_from_bytes(other_b, params.n_mels) if other_b else None
        for name, image in baseline_images(clip_id, true, bass, other, params, seed).items():
            start = time.perf_counter()
            features = clip_features(image, true, bass, params)
            # true-drums: the real row's activations are copied on the driver (same image).
            # other-clip: `generated` names the partner clip (for the report's audio).
            rows.emit("baseline", name, clip_id, clip_id, other_id if name == OTHER else "",
                      b"" if name == TRUE else image_bytes(image), "", features, time.perf_counter() - start, active)
    return rows.columns()


# ---------------------------------------------------------------- Inception


class InceptionActor:
    """Loads the Inception network once per actor; adds the pooled activations of every row."""

    def __init__(self, weights: str, n_mels: int, window_frames: int, device: str,
                 s3_endpoint_url: str | None = None, batch_size: int = 16, placements=None,
                 torch_threads: int = 1):
        from cluster.placement import claim_device
        from infer.inception import InceptionFeatures, load_state_dict

        self.device = claim_device(device, "Inception", placements, torch_threads)
        self.net = InceptionFeatures(load_state_dict(weights, s3_endpoint_url)).to(self.device)
        self.n_mels, self.window_frames, self.batch_size = n_mels, window_frames, batch_size

    def __call__(self, batch: dict) -> dict:
        from infer.inception import clip_activations

        start = time.perf_counter()
        n = len(batch["clip_id"])
        ok = [i for i in range(n) if not batch["error"][i] and len(batch["image"][i])]
        images = [image_from_bytes(batch["image"][i], self.n_mels) for i in ok]
        acts = clip_activations(self.net, images, self.window_frames, self.device, self.batch_size)
        out = {k: v for k, v in batch.items() if k != "image"}
        for layer, channels in LAYERS.items():
            full = np.zeros((n, channels), np.float32)
            full[ok] = acts[layer]
            out[f"act_{layer}"] = full
        out["seconds_inception"] = np.full(n, (time.perf_counter() - start) / max(1, n))
        return out


def run_steps(batch: dict, steps) -> dict:
    """`batch` through light (function, keyword arguments) steps, in order.

    On a CPU cluster the model actors run the decode steps themselves: a separate task
    process per core would import torch beside the actors while they start (2-3 s of a
    core each) and then share their cores for a few milliseconds of work per clip."""
    for fn, kwargs in steps:
        batch = fn(batch, **kwargs)
    return batch


class FeaturesInceptionActor(InceptionActor):
    """On a CPU cluster: a block of reference clips' whole scoring, one actor per core:
    the reference decoding (`before`, for audio references), the features and Inception.

    All of it is CPU-bound per clip, so one process doing a clip's whole work keeps every
    core busy without shipping images between processes; on GPUs the features stay in
    CPU tasks and Inception gets the GPU actors (score.build_dataset)."""

    def __init__(self, features: dict, features_fn=None, before=(), **inception):
        super().__init__(**inception)
        self.features = features  # the features function's keyword arguments
        # score's features_batch, or evaluate's (which reads the generated images from the row)
        self.features_fn = features_fn or features_batch
        self.before = before

    def __call__(self, batch: dict) -> dict:
        return super().__call__(self.features_fn(run_steps(batch, self.before), **self.features))

