"""`cycledrums score GENERATED REFERENCE OUTPUT`: objective features, a grader, histograms.

GENERATED: the drums to score.  One of
  - a `cycledrums generate` OUTPUT folder: its manifest lists each clip's drums.wav;
  - a folder (or single file) of drum audio: clip ids as in `infer.sources` (a folder of
    `<clip>/drums.wav` files, or of `<clip>.wav` files).
  Several sets can be scored together (e.g. CycleGAN and Pix2Pix): each is
  `[LABEL=]PATH`; the label defaults to the model named in the generate summary, else
  the folder's name.

REFERENCE: the true drums, matched to generated clips by clip id.  One of
  - a `prepare` Parquet window set: its `test` split rows; a clip is one window, id
    "<track_id>/w<window:04d>" (what `generate` names the clips it makes from the same
    Parquet); the true drums are the `drums` image, the bass the `bass` image;
  - a folder of drum audio: `<clip>/drums.*` (a `bass.*` beside it is used for the
    rhythm features) or `<clip>.*`.
  Every reference clip, generated or not, is also a sample of "real drums" for the
  Gaussians of the density features.

Per generated clip (the generated audio is turned into a mel image with the
reference's mel parameters; the two images are compared over their common length):
  stoi_000..stoi_255   STOI-like correlation per mel bin (infer.features)
  stoi_mean            its mean over the true drums' active bins
  level_diff_db        generated minus true mean mel level, dB
  rhythm_*             onset alignment with the bass, the bass's beat grid, the true drums
  density_<layer>      log-likelihood per dimension of the clip's Inception-v3 activations
                       (mixed_5d, mixed_6e, pool3) under the Gaussian fitted to the real clips
Per set: the Fréchet (Inception) distance to the real clips at each layer.

Grader: with --annotations, a logistic-regression grader (infer.grader) is trained
and cross-validated, saved as OUTPUT/grader.joblib and applied to every clip; with
--grader PATH a saved one is applied (and, with annotations too, evaluated on them,
not retrained).  Without either, only the objective features are reported.

OUTPUT: clips.parquet + clips.csv (one row per generated clip: features, annotated
grade and bucket, predicted bucket and its probabilities, seconds per stage),
errors.parquet + errors.csv (clips that could not be scored, with the reason),
summary.json, buckets.png (predicted buckets per set, like the paper's figure 4),
grades.png (annotated grades, like figure 3), features.png.

The work is a Ray Data job: reading references (CPU), decoding generated clips and
computing the mel-domain features (CPU tasks), Inception activations (an actor pool:
one actor per GPU when the cluster has GPUs, else CPU actors), then the Gaussians,
distances and the grader on the driver.
"""
from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np

from cluster.resources import ResourceRequest
from infer.features import RHYTHM_FEATURES, stoi_names
from infer.inception import LAYERS
from pipelines.storage import read_bytes, write_bytes

log = logging.getLogger(__name__)

SCALAR_FEATURES = ("stoi_mean", "level_diff_db") + RHYTHM_FEATURES
DENSITY_FEATURES = tuple(f"density_{layer}" for layer in LAYERS)
REFERENCE_LABEL = "reference"


def mel_feature_names(n_mels: int = 256) -> list[str]:
    return stoi_names(n_mels) + list(SCALAR_FEATURES)


def grader_feature_names(n_mels: int = 256) -> list[str]:
    return mel_feature_names(n_mels) + list(DENSITY_FEATURES)


@dataclass
class ScoreConfig:
    generated: list[str]                 # "[LABEL=]PATH" each
    reference: str
    output: str
    annotations: str | None = None
    grader: str | None = None
    inception_weights: str | None = None
    batch_size: int = 16
    grader_c: float = 1.0
    seed: int = 0
    s3_endpoint_url: str | None = None
    address: str | None = None
    resources: ResourceRequest = field(default_factory=ResourceRequest)


class ScoreError(ValueError):
    """A problem with the job's inputs as a whole (printed as a CLI error)."""


# ---------------------------------------------------------------- inputs


def parse_generated(spec: str) -> tuple[str | None, str]:
    """'LABEL=PATH' -> (LABEL, PATH); a plain path -> (None, PATH)."""
    head, sep, tail = spec.partition("=")
    if sep and head and tail and "/" not in head and ":" not in head:
        return head, tail
    return None, spec


@dataclass
class GeneratedSet:
    label: str
    uri: str
    clips: list  # [AudioClip]


def load_generated_sets(specs: list[str], s3_endpoint_url: str | None) -> list[GeneratedSet]:
    from infer.sources import generated_clips

    sets: list[GeneratedSet] = []
    for spec in specs:
        label, uri = parse_generated(spec)
        clips, summary = generated_clips(uri, s3_endpoint_url)
        if not clips:
            raise ScoreError(f"no generated clips in {uri}")
        label = label or summary.get("model") or posixpath.basename(uri.rstrip("/")) or "generated"
        taken = {s.label for s in sets}
        base, n = label, 2
        while label in taken:
            label, n = f"{base}-{n}", n + 1
        sets.append(GeneratedSet(label, uri, clips))
    return sets


@dataclass
class ReferenceSet:
    uri: str
    kind: str                      # "parquet" | "audio"
    params: object                 # MelParams
    clip_ids: list[str]
    audio_rows: list[dict] = field(default_factory=list)


def load_reference(uri: str, s3_endpoint_url: str | None) -> ReferenceSet:
    from pipelines.mel import MelParams

    from infer.sources import is_parquet_source, list_audio, sibling_audio, window_clip_id

    if is_parquet_source(uri, s3_endpoint_url):
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        from pipelines.storage import arrow_filesystem
        from pipelines.windows import mel_params_from_schema

        fs, path = arrow_filesystem(uri, s3_endpoint_url)
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        try:
            params = mel_params_from_schema(dataset.schema)
        except ValueError as err:
            raise ScoreError(f"{uri}: {err}") from err
        ids = dataset.to_table(columns=["track_id", "window"], filter=pc.field("split") == "test")
        clip_ids = [window_clip_id(t, w) for t, w in zip(ids.column("track_id").to_pylist(),
                                                          ids.column("window").to_pylist())]
        if not clip_ids:
            raise ScoreError(f"{uri}: no rows in the test split")
        return ReferenceSet(uri, "parquet", params, clip_ids)
    clips = list_audio([uri], stem="drums", s3_endpoint_url=s3_endpoint_url)
    rows = []
    for clip in clips:
        is_stem = posixpath.basename(clip.uri).rsplit(".", 1)[0] == "drums"
        bass = sibling_audio(clip.uri, "bass", s3_endpoint_url) if is_stem else None
        rows.append({"clip_id": clip.clip_id, "drums_uri": clip.uri, "bass_uri": bass or ""})
    return ReferenceSet(uri, "audio", MelParams(), [r["clip_id"] for r in rows], rows)


# ---------------------------------------------------------------- Ray stages


def load_mel_image(uri: str, params, s3_endpoint_url: str | None = None) -> np.ndarray:
    """Audio file (local or URL) -> uint8 mel image [n_mels, frames]; silence allowed (it is a valid clip)."""
    import io

    from pipelines.audio import load_audio
    from pipelines.mel import audio_to_image

    from infer.sources import check_long_enough

    data = read_bytes(uri, s3_endpoint_url)
    f = io.BytesIO(data)
    f.name = uri  # for error messages
    audio = load_audio(f, params.sample_rate, allow_silent=True)
    check_long_enough(audio, params, uri)
    return audio_to_image(audio, params).numpy()


def _image_bytes(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def _image_from_bytes(data: bytes, n_mels: int) -> np.ndarray:
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n_mels, -1)  # writable for torch


def parquet_reference_batch(batch, params_dict: dict) -> dict:
    """Parquet test windows (pyarrow batch) -> reference rows."""
    from pipelines.mel import MelParams
    from pipelines.windows import binary_to_images

    from infer.sources import window_clip_id

    params = MelParams.from_dict(params_dict)
    start = time.perf_counter()
    test = [s == "test" for s in batch.column("split").to_pylist()]
    batch = batch.filter(test)
    drums = binary_to_images(batch.column("drums"), params)
    bass = binary_to_images(batch.column("bass"), params)
    n = batch.num_rows
    return {
        "clip_id": np.array([window_clip_id(t, w) for t, w in zip(batch.column("track_id").to_pylist(),
                                                                   batch.column("window").to_pylist())],
                            dtype=object),
        "ref_image": np.array([_image_bytes(x) for x in drums], dtype=object),
        "bass_image": np.array([_image_bytes(x) for x in bass], dtype=object),
        "ref_error": np.array([""] * n, dtype=object),
        "ref_seconds": np.full(n, (time.perf_counter() - start) / max(1, n)),
    }


def audio_reference_batch(batch: dict, params_dict: dict, s3_endpoint_url: str | None) -> dict:
    """Reference audio rows (clip_id, drums_uri, bass_uri) -> reference rows with mel images."""
    from pipelines.audio import AudioError
    from pipelines.mel import MelParams

    params = MelParams.from_dict(params_dict)
    out = {"clip_id": [], "ref_image": [], "bass_image": [], "ref_error": [], "ref_seconds": []}
    for clip_id, drums_uri, bass_uri in zip(batch["clip_id"], batch["drums_uri"], batch["bass_uri"]):
        ref, bass, error = b"", b"", ""
        start = time.perf_counter()
        try:
            ref = _image_bytes(load_mel_image(drums_uri, params, s3_endpoint_url))
            if bass_uri:
                bass = _image_bytes(load_mel_image(bass_uri, params, s3_endpoint_url))
        except (AudioError, FileNotFoundError, OSError) as err:
            error = f"reference: {err}"
        out["clip_id"].append(clip_id)
        out["ref_image"].append(ref)
        out["bass_image"].append(bass)
        out["ref_error"].append(error)
        out["ref_seconds"].append(time.perf_counter() - start)
    result = {k: np.array(v, dtype=object) for k, v in out.items()}
    result["ref_seconds"] = np.array(out["ref_seconds"], dtype=np.float64)
    return result


def clip_features(generated_mel: np.ndarray, true_mel: np.ndarray, bass_mel: np.ndarray | None,
                  params) -> np.ndarray:
    """All mel-domain features of one generated clip, in `mel_feature_names` order."""
    from pipelines.mel import dequantize
    import torch

    from infer.features import level_diff_db, rhythm_features, stoi_like, stoi_mean

    def db(image):
        return dequantize(torch.from_numpy(np.ascontiguousarray(image)), params).numpy()

    gen, true = db(generated_mel), db(true_mel)
    bass = db(bass_mel) if bass_mel is not None else None
    stoi = stoi_like(true, gen)
    rhythm = rhythm_features(gen, true, bass, params.sample_rate / params.hop_length)
    scalars = [stoi_mean(stoi, true), level_diff_db(gen, true)] + [rhythm[k] for k in RHYTHM_FEATURES]
    return np.concatenate([stoi, scalars]).astype(np.float32)


def features_batch(batch: dict, lookup: dict, params_dict: dict, s3_endpoint_url: str | None) -> dict:
    """Reference rows -> one 'real' row each plus one 'generated' row per generated clip with that id."""
    from pipelines.audio import AudioError
    from pipelines.mel import MelParams

    params = MelParams.from_dict(params_dict)
    n_features = len(mel_feature_names(params.n_mels))
    out = {k: [] for k in ("kind", "set", "clip_id", "generated", "image", "error", "features",
                           "seconds_features")}

    def emit(kind, label, clip_id, uri, image, error, features, seconds):
        out["kind"].append(kind)
        out["set"].append(label)
        out["clip_id"].append(clip_id)
        out["generated"].append(uri)
        out["image"].append(image)
        out["error"].append(error)
        out["features"].append(features if features is not None else np.zeros(n_features, np.float32))
        out["seconds_features"].append(seconds)

    for clip_id, ref_b, bass_b, ref_error, ref_seconds in zip(
            batch["clip_id"], batch["ref_image"], batch["bass_image"], batch["ref_error"], batch["ref_seconds"]):
        emit("real", REFERENCE_LABEL, clip_id, "", ref_b, ref_error, None, 0.0)
        true = _image_from_bytes(ref_b, params.n_mels) if not ref_error else None
        bass = _image_from_bytes(bass_b, params.n_mels) if (bass_b and not ref_error) else None
        for label, uri in lookup.get(clip_id, ()):
            start = time.perf_counter()
            if ref_error:
                emit("generated", label, clip_id, uri, b"", f"no usable reference ({ref_error})", None, 0.0)
                continue
            try:
                gen = load_mel_image(uri, params, s3_endpoint_url)
            except (AudioError, FileNotFoundError, OSError) as err:
                emit("generated", label, clip_id, uri, b"", str(err), None, 0.0)
                continue
            features = clip_features(gen, true, bass, params)
            # The clip's share of the work: its own decode + features, and its reference's decode.
            emit("generated", label, clip_id, uri, _image_bytes(gen), "", features,
                 time.perf_counter() - start + float(ref_seconds))
    result = {k: np.array(v, dtype=object) for k, v in out.items() if k != "features"}
    result["features"] = np.stack(out["features"]).astype(np.float32)
    result["seconds_features"] = np.array(out["seconds_features"], dtype=np.float64)
    return result


class InceptionActor:
    """Loads the Inception network once per actor; adds the pooled activations of every row."""

    def __init__(self, weights: str, n_mels: int, window_frames: int, device: str,
                 s3_endpoint_url: str | None = None, batch_size: int = 16, placements=None,
                 torch_threads: int = 1):
        from cluster.resources import claim_device
        from infer.inception import InceptionFeatures, load_state_dict

        self.device = claim_device(device, "Inception", placements, torch_threads)
        self.net = InceptionFeatures(load_state_dict(weights, s3_endpoint_url)).to(self.device)
        self.n_mels, self.window_frames, self.batch_size = n_mels, window_frames, batch_size

    def __call__(self, batch: dict) -> dict:
        from infer.inception import clip_activations

        start = time.perf_counter()
        n = len(batch["clip_id"])
        ok = [i for i in range(n) if not batch["error"][i]]
        images = [_image_from_bytes(batch["image"][i], self.n_mels) for i in ok]
        acts = clip_activations(self.net, images, self.window_frames, self.device, self.batch_size)
        out = {k: v for k, v in batch.items() if k != "image"}
        for layer, channels in LAYERS.items():
            full = np.zeros((n, channels), np.float32)
            full[ok] = acts[layer]
            out[f"act_{layer}"] = full
        out["seconds_inception"] = np.full(n, (time.perf_counter() - start) / max(1, n))
        return out


# ---------------------------------------------------------------- the job


@dataclass
class Collected:
    """Everything that came back from the Ray job, as columns."""

    columns: dict

    def select(self, mask: np.ndarray) -> dict:
        return {k: v[mask] for k, v in self.columns.items()}


def _collect(ds, total: int) -> Collected:
    from infer.runtime import Progress

    progress = Progress("score", total)
    parts: dict[str, list] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=256):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
        generated = batch["kind"] == "generated"
        progress.update(int(generated.sum()), int((generated & (batch["error"] != "")).sum()))
    if not parts:
        raise ScoreError("the job returned no rows")
    return Collected({k: np.concatenate(v) for k, v in parts.items()})


def build_dataset(reference: ReferenceSet, sets: list[GeneratedSet], cfg: ScoreConfig):
    """(the lazy dataset, the Inception actors' plan, their placement book)."""
    import ray.data

    from cluster.resources import ResourceError, plan_model_stage
    from infer.inception import resolve_weights

    params = reference.params
    lookup: dict[str, list] = {}
    for s in sets:
        for clip in s.clips:
            lookup.setdefault(clip.clip_id, []).append((s.label, clip.uri))
    if reference.kind == "parquet":
        from ray.data.expressions import col

        from pipelines.storage import arrow_filesystem

        fs, path = arrow_filesystem(reference.uri, cfg.s3_endpoint_url)
        ds = ray.data.read_parquet(path, filesystem=fs).select_columns(
            ["track_id", "split", "window", "bass", "drums"])
        ds = ds.filter(expr=col("split") == "test")
        ds = ds.map_batches(parquet_reference_batch, batch_format="pyarrow", batch_size=64,
                            fn_kwargs={"params_dict": params.to_dict()}, num_cpus=1)
    else:
        ds = ray.data.from_items(reference.audio_rows)
        ds = ds.map_batches(audio_reference_batch, batch_format="numpy", batch_size=8, num_cpus=1,
                            fn_kwargs={"params_dict": params.to_dict(),
                                       "s3_endpoint_url": cfg.s3_endpoint_url})
    ds = ds.map_batches(features_batch, batch_format="numpy", batch_size=8, num_cpus=1,
                        fn_kwargs={"lookup": lookup, "params_dict": params.to_dict(),
                                   "s3_endpoint_url": cfg.s3_endpoint_url})
    try:
        plan, book = plan_model_stage(cfg.resources, what="Inception")
    except ResourceError as err:
        raise ScoreError(str(err)) from err
    weights = resolve_weights(cfg.inception_weights)
    ds = ds.map_batches(
        InceptionActor,
        fn_constructor_kwargs={"weights": weights, "n_mels": params.n_mels,
                               "window_frames": params.window_frames, "device": plan.device,
                               "s3_endpoint_url": cfg.s3_endpoint_url, "batch_size": cfg.batch_size,
                               "placements": book, "torch_threads": plan.torch_threads},
        batch_format="numpy", batch_size=cfg.batch_size, compute=plan.compute(), **plan.remote_args())
    return ds, plan, book


def run_score(cfg: ScoreConfig) -> dict:
    """Run the whole scoring job; returns the summary (also written to OUTPUT/summary.json)."""
    from cluster.ray_runtime import init_ray
    from cluster.resources import no_cuda_message, placement_summary, read_placements
    from infer.inception import resolve_weights
    from infer.sources import SourceError

    if cfg.batch_size < 1:
        raise ScoreError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    resolve_weights(cfg.inception_weights)  # fail before any work when there are no weights
    try:
        sets = load_generated_sets(cfg.generated, cfg.s3_endpoint_url)
        reference = load_reference(cfg.reference, cfg.s3_endpoint_url)
    except SourceError as err:
        raise ScoreError(str(err)) from err
    grader = _load_grader_if_any(cfg)
    annotations = _read_annotations_if_any(cfg)

    init_ray(cfg.address)
    start = time.perf_counter()
    ds, plan, book = build_dataset(reference, sets, cfg)
    n_generated = sum(len(s.clips) for s in sets)
    log.info("scoring %d generated clips in %d set(s) against %d reference clips (%s); Inception on %s x%d",
             n_generated, len(sets), len(reference.clip_ids), reference.kind, plan.device, plan.size)
    try:
        collected = _collect(ds, n_generated)
    except Exception as err:
        message = no_cuda_message(err)
        if message:  # a broken GPU node: stop with its name, not a 300-line actor traceback
            raise ScoreError(message) from err
        raise
    job_seconds = time.perf_counter() - start
    resources = placement_summary(plan, read_placements(book))
    return finish(collected, sets, reference, cfg, grader, annotations, job_seconds, resources)


def _load_grader_if_any(cfg: ScoreConfig):
    if not cfg.grader:
        return None
    from infer.grader import load_grader

    try:
        grader = load_grader(cfg.grader, cfg.s3_endpoint_url)
    except (FileNotFoundError, ValueError) as err:
        raise ScoreError(str(err)) from err
    return grader


def _read_annotations_if_any(cfg: ScoreConfig):
    if not cfg.annotations:
        return None
    from infer.grader import read_annotations

    return read_annotations(cfg.annotations, cfg.s3_endpoint_url)


# ---------------------------------------------------------------- after the job


def _missing_reference_errors(sets: list[GeneratedSet], reference: ReferenceSet) -> list[dict]:
    known = set(reference.clip_ids)
    return [{"set": s.label, "clip_id": c.clip_id, "input": c.uri,
             "reason": f"no reference clip with id {c.clip_id!r} in {reference.uri}"}
            for s in sets for c in s.clips if c.clip_id not in known]


def finish(collected: Collected, sets: list[GeneratedSet], reference: ReferenceSet, cfg: ScoreConfig,
           grader, annotations, job_seconds: float, resources: dict | None = None) -> dict:
    import pandas as pd
    import pyarrow as pa

    from infer.density import centred_svd, fit_gaussian, frechet_distance
    from infer.runtime import write_table

    cols = collected.columns
    params = reference.params
    real_ok = (cols["kind"] == "real") & (cols["error"] == "")
    gen_ok = (cols["kind"] == "generated") & (cols["error"] == "")
    if real_ok.sum() < 2:
        raise ScoreError(f"need at least 2 usable reference clips for the real-drum Gaussians, "
                         f"got {int(real_ok.sum())}")
    real = collected.select(real_ok)
    gen = collected.select(gen_ok)

    # Density features: log-likelihood under the Gaussian of the real clips, per layer.
    table = pd.DataFrame({"set": gen["set"].astype(str), "clip_id": gen["clip_id"].astype(str),
                          "generated": gen["generated"].astype(str)})
    features = pd.DataFrame(gen["features"], columns=mel_feature_names(params.n_mels))
    table = pd.concat([table, features], axis=1)
    frechet: dict[str, dict[str, float | None]] = {s.label: {} for s in sets}
    for layer in LAYERS:
        real_acts = real[f"act_{layer}"].astype(np.float64)
        svd = centred_svd(real_acts)  # shared by the Gaussian and every set's distance
        gaussian = fit_gaussian(real_acts, svd)
        table[f"density_{layer}"] = gaussian.log_likelihood(gen[f"act_{layer}"]) if len(table) else []
        for s in sets:
            acts = gen[f"act_{layer}"][gen["set"] == s.label]
            frechet[s.label][layer] = (frechet_distance(real_acts, acts, svd) if len(acts) >= 2 else None)
    table["seconds_features"] = gen["seconds_features"]
    table["seconds_inception"] = gen["seconds_inception"]

    grader_summary, grader = _apply_grader(table, sets, grader, annotations, cfg, params.n_mels)

    errors = _missing_reference_errors(sets, reference)
    bad = cols["error"] != ""
    for kind, label, clip_id, uri, reason in zip(cols["kind"][bad], cols["set"][bad], cols["clip_id"][bad],
                                                  cols["generated"][bad], cols["error"][bad]):
        errors.append({"set": str(label), "clip_id": str(clip_id),
                       "input": str(uri) if kind == "generated" else reference.uri, "reason": str(reason)})
    errors_table = pa.Table.from_pylist(errors, schema=pa.schema(
        [("set", pa.string()), ("clip_id", pa.string()), ("input", pa.string()), ("reason", pa.string())]))

    outputs = write_table(pa.Table.from_pandas(table, preserve_index=False), cfg.output, "clips",
                          cfg.s3_endpoint_url)
    outputs += write_table(errors_table, cfg.output, "errors", cfg.s3_endpoint_url)
    if grader is not None and cfg.annotations and not cfg.grader:
        from infer.runtime import join_uri

        path = join_uri(cfg.output, "grader.joblib")
        grader.save(path, cfg.s3_endpoint_url)
        outputs.append(path)
        grader_summary["path"] = path
    outputs += _write_plots(table, sets, cfg)

    summary = {
        "reference": {"uri": reference.uri, "kind": reference.kind, "clips": len(reference.clip_ids),
                      "usable": int(real_ok.sum())},
        "sets": {s.label: _set_summary(table, s, frechet[s.label], errors) for s in sets},
        "grader": grader_summary,
        "clips_scored": int(len(table)),
        "errors": len(errors),
        "seconds": {"job": round(job_seconds, 3),
                    "features_total": float(table["seconds_features"].sum()),
                    "inception_total": float(table["seconds_inception"].sum())},
        "clips_per_second": round(len(table) / job_seconds, 3) if job_seconds > 0 else None,
        "mel_params": params.to_dict(),
        "device": (resources or {}).get("device"), "resources": resources or {},
        "outputs": outputs,
    }
    from infer.runtime import join_uri

    summary_path = join_uri(cfg.output, "summary.json")
    summary["outputs"].append(summary_path)
    write_bytes(summary_path, json.dumps(summary, indent=2).encode(), cfg.s3_endpoint_url)
    return summary


def _set_summary(table, s: GeneratedSet, frechet: dict, errors: list[dict]) -> dict:
    rows = table[table["set"] == s.label]
    out = {
        "uri": s.uri,
        "clips": len(s.clips),
        "scored": int(len(rows)),
        "errors": sum(e["set"] == s.label for e in errors),
        "frechet_distance": frechet,
        "mean": {k: float(rows[k].mean()) if len(rows) else None
                 for k in list(SCALAR_FEATURES) + list(DENSITY_FEATURES)},
    }
    if "bucket_pred" in rows:
        out["predicted_bucket_histogram"] = np.bincount(rows["bucket_pred"].astype(int), minlength=4).tolist()
    if "bucket" in rows:
        annotated = rows["bucket"].dropna().astype(int)
        out["annotated_bucket_histogram"] = np.bincount(annotated, minlength=4).tolist()
        out["annotated_grade_histogram"] = np.bincount(rows["grade"].dropna().astype(int), minlength=10).tolist()
    return out


def _join_annotations(table, sets, annotations):
    """Add grade_mean / grade / bucket / raters columns (NaN where a clip has no annotation)."""
    from infer.grader import AnnotationError, clip_grades

    by_set = "set" in annotations.columns
    if not by_set:
        ids = table["clip_id"]
        shared = ids[ids.duplicated()].unique()
        if len(shared):
            raise AnnotationError(
                f"clip ids {list(shared[:5])} occur in several GENERATED sets; add a 'set' column "
                f"to the annotations naming the set ({', '.join(s.label for s in sets)})")
    grades = clip_grades(annotations, by_set)
    keys = ["set", "clip_id"] if by_set else ["clip_id"]
    merged = table.merge(grades, on=keys, how="left")
    unmatched = len(grades) - int(merged["grade"].notna().sum())
    if unmatched:
        log.warning("%d annotated clips are not among the scored clips (ids or set labels differ)", unmatched)
    return merged, unmatched


def _apply_grader(table, sets, grader, annotations, cfg: ScoreConfig, n_mels: int):
    """Train (annotations), or load (--grader) and evaluate, then predict every clip in place."""
    from infer.grader import AnnotationError, train_grader

    summary: dict = {"source": None}
    names = grader_feature_names(n_mels)
    if annotations is not None:
        try:
            merged, unmatched = _join_annotations(table, sets, annotations)
        except AnnotationError as err:
            raise ScoreError(str(err)) from err
        for column in ("grade_mean", "raters", "grade", "bucket"):
            table[column] = merged[column].to_numpy()
        summary["annotated_clips"] = int(table["bucket"].notna().sum())
        summary["annotations_unmatched"] = unmatched
    if grader is None and annotations is not None:
        annotated = table["bucket"].notna()
        try:
            grader = train_grader(table.loc[annotated, names].to_numpy(), table.loc[annotated, "bucket"]
                                  .astype(int).to_numpy(), names, c=cfg.grader_c, seed=cfg.seed)
        except AnnotationError as err:
            raise ScoreError(str(err)) from err
        counts = np.asarray(grader.class_counts)
        summary.update(source="trained", cv_accuracy=grader.cv_accuracy, confusion_matrix=grader.confusion,
                       trained_on=grader.n_train, bucket_counts=grader.class_counts,
                       majority_baseline=float(counts.max() / max(1, counts.sum())),
                       confusion_rows="true bucket", confusion_columns="predicted bucket")
    elif grader is not None:
        if grader.feature_names != names:
            raise ScoreError("the saved grader was trained on different features "
                             f"({len(grader.feature_names)} vs {len(names)}); retrain it")
        summary.update(source=cfg.grader, cv_accuracy_at_training=grader.cv_accuracy)
    if grader is None:
        return summary, None
    buckets, probs = grader.predict(table[names].to_numpy())
    table["bucket_pred"] = buckets
    for b in range(probs.shape[1]):
        table[f"prob_{b}"] = probs[:, b]
    if annotations is not None and cfg.grader:
        annotated = table["bucket"].notna().to_numpy()
        if annotated.any():
            from sklearn.metrics import confusion_matrix

            truth = table.loc[annotated, "bucket"].astype(int).to_numpy()
            summary["accuracy_on_annotations"] = float((buckets[annotated] == truth).mean())
            summary["confusion_matrix"] = confusion_matrix(truth, buckets[annotated], labels=[0, 1, 2, 3]).tolist()
    return summary, grader


def _write_plots(table, sets: list[GeneratedSet], cfg: ScoreConfig) -> list[str]:
    from infer.report import bucket_histogram_png, feature_histograms_png, grade_histogram_png
    from infer.runtime import join_uri

    written = []
    labels = [s.label for s in sets]
    if "bucket_pred" in table:
        per_set = {l: np.bincount(table.loc[table["set"] == l, "bucket_pred"].astype(int), minlength=4)
                   for l in labels}
        path = join_uri(cfg.output, "buckets.png")
        write_bytes(path, bucket_histogram_png(per_set, "predicted grade bucket per clip"), cfg.s3_endpoint_url)
        written.append(path)
    if "grade" in table and table["grade"].notna().any():
        per_set = {l: np.bincount(table.loc[(table["set"] == l) & table["grade"].notna(), "grade"].astype(int),
                                  minlength=10) for l in labels}
        path = join_uri(cfg.output, "grades.png")
        write_bytes(path, grade_histogram_png(per_set, "annotated grades"), cfg.s3_endpoint_url)
        written.append(path)
    names = ["stoi_mean", "rhythm_bass_onsets", "density_pool3"]
    per_set = {l: {n: table.loc[table["set"] == l, n].to_numpy() for n in names} for l in labels}
    path = join_uri(cfg.output, "features.png")
    write_bytes(path, feature_histograms_png(per_set, names), cfg.s3_endpoint_url)
    written.append(path)
    return written
