"""`cycledrums generate CHECKPOINT INPUT... OUTPUT`: drums for bass lines, as a Ray Data job.

Stages.  On GPUs the model and Griffin-Lim run in one actor per GPU, decoding and
writing in light CPU tasks beside them, so neither waits on the other.  On a CPU cluster
one actor per core (ClipActor) runs all three for a block of clips: a clip's whole work
in one process, and no task process starting beside the actors (Parquet windows are
still read in tasks).
  1. decode (CPU tasks): read the bass file, mono at the model's mel rate, mel image,
     256-frame windows with 50 frames of overlap, the tail padded with silence so
     every frame is covered (`pipelines.mel.cut_windows(pad_tail=True)`).  For a
     Parquet window set: its `test` rows' `bass` windows, one clip per window.
  2. generate + invert (an actor pool sized by the shared resource policy,
     cluster/resources.py: GPU actors with --device cuda / auto on a GPU cluster, else
     one CPU actor per core with one torch thread): the generator is loaded once per
     actor with `train.checkpoint.load_generator`; windows go through it `batch_size`
     at a time; then the windows are stitched with a cross-faded overlap-add of their
     mel power (`infer.render` says why power, not dB) and inverted with batched
     Griffin-Lim (`pipelines.mel.image_to_audio`).  Inverting in the actor keeps the
     audio path on the GPU there, and on CPU it keeps a clip's compute in one
     process: nothing heavy waits in the object store for a free task.
  3. write (CPU tasks): resampled to the output rate, level-matched to the bass, mixed
     with the ORIGINAL bass audio (re-read from the input; for Parquet input the bass is
     re-synthesised from its mel window), written as drums.wav, mix.wav and
     drums_mel.png.
Then the driver writes manifest.parquet/.csv, errors.parquet/.csv and summary.json.

Controlled randomness (`variation`, `seed`): noise N(0, variation^2) is added to the
generator's input (the bass window in [-1, 1], clamped back to that range).  The
noise of window w of clip c comes from a generator seeded with hash(seed, c, w), so
it does not depend on batching or on which actor runs it: the same seed gives the
same drums, another seed other drums, and variation 0 gives the deterministic
output whatever the seed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from cluster.resources import ResourceRequest
from cluster.errors import UserError
from infer.options import GenerationOptions
from pipelines.codec_options import GRIFFIN_LIM_ITERS
from pipelines.storage import read_bytes, write_bytes

log = logging.getLogger(__name__)

OUTPUT_FILES = {"drums": "drums.wav", "mix": "mix.wav", "mel": "drums_mel.png"}
# CPUs the decode and write tasks share on a CPU cluster; the generator actors, which also
# invert, take the rest (cluster.resources.plan_actors).
IO_CPUS = 0.5


class GenerateError(UserError):
    """A problem with the job as a whole (bad options, no checkpoint, no inputs)."""


@dataclass(kw_only=True)
class GenerateConfig(GenerationOptions):
    """`generate`: the generation options (infer/options.py) and what the job works on."""

    checkpoint: str
    inputs: list[str]
    output: str
    seed: int = 0
    s3_endpoint_url: str | None = None
    address: str | None = None
    resources: ResourceRequest = field(default_factory=ResourceRequest)

    def validate(self) -> None:
        self.check_generation()


# ---------------------------------------------------------------- rows between stages

_ROW_DEFAULTS = {
    "clip_id": "", "input": "", "error": "", "stage": "", "windows": b"", "drum_windows": b"",
    "n_windows": 0, "n_frames": 0, "model_samples": 0, "input_rate": 0, "input_samples": 0,
    "channels": 0, "bass_from_mel": False, "seconds_decode": 0.0, "seconds_generate": 0.0,
    "transient": False,
    # filled when the generator actor inverts: stitched drum image, audio at the mel rate
    "drums_image": b"", "drums_audio": b"", "bass_audio": b"", "seconds_stitch": 0.0, "seconds_invert": 0.0,
}


def _columns(rows: list[dict]) -> dict:
    """List of row dicts -> columnar numpy batch (object arrays for strings and bytes)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = np.array(values, dtype=object) if isinstance(values[0], (str, bytes)) else np.array(values)
    return out


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: batch[k][i] for k in keys} for i in range(n)]


def _row(**values) -> dict:
    row = dict(_ROW_DEFAULTS)
    row.update(values)
    return row


def _decode_source(uri: str, s3_endpoint_url: str | None):
    """(float32 [frames, channels], rate) of an audio file, local or URL."""
    from pipelines.audio import read_audio

    f = io.BytesIO(read_bytes(uri, s3_endpoint_url))
    f.name = uri  # error messages name the file
    return read_audio(f)


# ---------------------------------------------------------------- stage 1: decode


def decode_batch(batch: dict, params_dict: dict, s3_endpoint_url: str | None) -> dict:
    """Bass files -> mel windows (one row per clip; a bad file becomes an error row)."""
    from pipelines.audio import AudioError, check_not_silent, to_mono_resampled
    from pipelines.mel import MelParams, audio_to_image, cut_windows
    from pipelines.storage import is_transient

    from infer.sources import check_long_enough

    params = MelParams.from_dict(params_dict)
    rows = []
    for clip_id, uri in zip(batch["clip_id"], batch["uri"]):
        start = time.perf_counter()
        try:
            data, rate = _decode_source(uri, s3_endpoint_url)
            mono = to_mono_resampled(data, rate, params.sample_rate)
            check_not_silent(mono, uri)
            check_long_enough(mono, params, uri)
            image = audio_to_image(mono, params)
            windows, _ = cut_windows(image, params, pad_tail=True)
        except (AudioError, FileNotFoundError, OSError) as err:
            rows.append(_row(clip_id=clip_id, input=uri, error=str(err), stage="decode",
                             transient=is_transient(err)))
            continue
        rows.append(_row(
            clip_id=clip_id, input=uri, windows=windows.numpy().tobytes(), n_windows=len(windows),
            n_frames=image.shape[-1], model_samples=mono.shape[-1], input_rate=rate,
            input_samples=data.shape[0], channels=data.shape[1],
            seconds_decode=time.perf_counter() - start))
    return _columns(rows)


def parquet_batch(batch, params_dict: dict, source: str) -> dict:
    """Parquet window rows (pyarrow batch) -> one clip per `test` bass window."""
    from pipelines.mel import MelParams
    from pipelines.windows import binary_to_images

    from infer.sources import window_clip_id

    params = MelParams.from_dict(params_dict)
    batch = batch.filter([s == "test" for s in batch.column("split").to_pylist()])
    start = time.perf_counter()
    images = binary_to_images(batch.column("bass"), params)
    seconds = (time.perf_counter() - start) / max(1, batch.num_rows)
    rows = [
        _row(clip_id=window_clip_id(track, window), input=f"{source}#{track}/{window}",
             windows=np.ascontiguousarray(image).tobytes(), n_windows=1, n_frames=params.window_frames,
             model_samples=params.window_samples, input_rate=params.sample_rate,
             input_samples=params.window_samples, channels=1, bass_from_mel=True, seconds_decode=seconds)
        for track, window, image in zip(batch.column("track_id").to_pylist(),
                                        batch.column("window").to_pylist(), images)
    ]
    if not rows:  # a batch with no test rows still needs the columns
        return {k: np.array([], dtype=object if isinstance(v, (str, bytes)) else type(v))
                for k, v in _ROW_DEFAULTS.items()}
    return _columns(rows)


# ---------------------------------------------------------------- stage 2: generate


def noise_seed(seed: int, clip_id: str, window: int) -> int:
    """A 63-bit seed that depends only on (seed, clip, window): independent of batching."""
    digest = hashlib.sha256(f"{seed}/{clip_id}/{window}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def variation_noise(shape: tuple, seed: int, clip_id: str, window: int, strength: float):
    import torch

    g = torch.Generator().manual_seed(noise_seed(seed, clip_id, window))
    return torch.randn(shape, generator=g) * strength


class GeneratorActor:
    """Holds the bass->drums generator (loaded once per actor) and runs windows through it."""

    def __init__(self, checkpoint: str, device: str, batch_size: int, variation: float, seed: int,
                 s3_endpoint_url: str | None = None, generator: tuple[dict, dict] | None = None,
                 placements=None, torch_threads: int = 1, n_iter: int = GRIFFIN_LIM_ITERS):
        """`generator` = (checkpoint config, generator state dict), as the driver read them:
        the actors then need no storage access (fewer places for an S3 fault to kill one).
        `n_iter`: Griffin-Lim iterations of the inversion each batch ends with."""
        import torch

        from cluster.placement import claim_device
        from pipelines.mel import MelParams
        from train.checkpoint import load_generator
        from train.models import build_generator

        device = claim_device(device, "generator", placements, torch_threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 256x256 windows: pick the fastest kernels once
        self.device = device
        if generator is not None:
            config, state = generator
            self.model = build_generator(config)
            self.model.load_state_dict(state)
            self.model.to(device).eval()
            self.params = MelParams.from_dict(config["mel_params"])
        else:
            self.model, self.params, _ = load_generator(checkpoint, device=device,
                                                        s3_endpoint_url=s3_endpoint_url)
        self.batch_size, self.variation, self.seed = batch_size, variation, seed
        self.n_iter = n_iter

    def model_input(self, windows, clip_id: str):
        """uint8 windows -> [n, 1, mels, frames] model input, with the seeded variation noise."""
        import torch

        from pipelines.mel import image_to_model

        x = image_to_model(windows).unsqueeze(1)
        if self.variation > 0:
            noise = torch.stack([variation_noise(x.shape[1:], self.seed, clip_id, w, self.variation)
                                 for w in range(len(x))])
            x = (x + noise).clamp(-1.0, 1.0)
        return x

    def generate(self, x):
        import torch

        from pipelines.mel import model_to_image

        outs = []
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                outs.append(self.model(x[start:start + self.batch_size].to(self.device)).float().cpu())
        return model_to_image(torch.cat(outs)).squeeze(1)

    def __call__(self, batch: dict) -> dict:
        import torch

        p = self.params
        rows = _rows(batch)
        if not rows:
            return batch
        # All windows of the batch's clips go through the model together, batch_size at a time.
        todo = [r for r in rows if not r["error"]]
        start = time.perf_counter()
        inputs = [self.model_input(torch.frombuffer(bytearray(r["windows"]), dtype=torch.uint8)
                                   .reshape(-1, p.n_mels, p.window_frames), str(r["clip_id"]))
                  for r in todo]
        if todo:
            drums = self.generate(torch.cat(inputs))
            offset = 0
            for r, x in zip(todo, inputs):
                r["drum_windows"] = drums[offset:offset + len(x)].numpy().tobytes()
                offset += len(x)
        seconds = time.perf_counter() - start
        total_windows = max(1, sum(int(r["n_windows"]) for r in todo))
        for r in todo:
            r["seconds_generate"] = seconds * int(r["n_windows"]) / total_windows
        if todo:
            self.invert_rows(todo)
        return _columns(rows)

    def invert_rows(self, todo: list[dict]) -> None:
        """Stitch and invert (pseudo-inverse + batched Griffin-Lim) on this actor's device:
        32 STFT/iSTFT pairs per clip, fast on a GPU, and on CPU one core's worth of work
        kept beside the generator instead of queued for a task."""
        import torch

        from infer import render

        p = self.params
        images, lengths, owners = [], [], []
        for r in todo:
            t0 = time.perf_counter()
            try:
                image = _stitched_image(r, p)
            except ValueError as err:  # reported by the render stage, like on CPU
                r["error"], r["stage"] = str(err), "stitch"
                continue
            r["seconds_stitch"] = time.perf_counter() - t0
            r["drums_image"] = image.numpy().tobytes()
            images.append(image.to(self.device))
            lengths.append(int(r["model_samples"]))
            owners.append((r, "drums_audio"))
            if r["bass_from_mel"]:
                bass = torch.frombuffer(bytearray(r["windows"]), dtype=torch.uint8).reshape(p.n_mels, p.window_frames)
                images.append(bass.to(self.device))
                lengths.append(int(r["model_samples"]))
                owners.append((r, "bass_audio"))
        if not images:
            return
        t0 = time.perf_counter()
        audio = render.invert_images(images, lengths, p, self.n_iter)
        audio = [a.float().cpu().numpy() for a in audio]
        seconds = time.perf_counter() - t0
        total = max(1, sum(img.shape[-1] for img in images))
        for (r, key), a, img in zip(owners, audio, images):
            r[key] = np.ascontiguousarray(a, dtype=np.float32).tobytes()
            r["seconds_invert"] = float(r["seconds_invert"]) + seconds * img.shape[-1] / total


# ---------------------------------------------------------------- stage 3: render


def _stitched_image(row: dict, params):
    """The clip's generated windows, cross-faded into one uint8 mel image of n_frames frames."""
    import torch

    from pipelines.mel import dequantize, quantize, window_starts

    from infer.render import stitch_windows

    windows = torch.frombuffer(bytearray(row["drum_windows"]), dtype=torch.uint8) \
        .reshape(-1, params.n_mels, params.window_frames)
    n_frames = int(row["n_frames"])
    starts = window_starts(n_frames, params, pad_tail=True)
    if len(starts) != len(windows):
        raise ValueError(f"{len(windows)} windows for {n_frames} frames (expected {len(starts)})")
    db = stitch_windows(dequantize(windows, params), starts, n_frames, params.overlap_frames)
    return quantize(db, params)


def _bass_audio(row: dict, out_rate: int, bass_mel_audio, params, s3_endpoint_url: str | None) -> np.ndarray:
    """[channels, n] bass at `out_rate`: the original file (re-read), or the re-synthesised window."""
    import torch

    from pipelines.audio import resample

    if row["bass_from_mel"]:
        signal, rate = bass_mel_audio.unsqueeze(0), params.sample_rate
    else:
        data, rate = _decode_source(str(row["input"]), s3_endpoint_url)
        signal = torch.from_numpy(np.ascontiguousarray(data.T))
    return resample(signal, rate, out_rate).numpy()


@dataclass
class Inverted:
    """A batch's clips as the generator actor left them: audio at the mel rate, keyed (kind, clip id)."""

    audio: dict           # ("drums" | "bass", clip id) -> [n] tensor
    images: dict          # clip id -> stitched uint8 drum image [n_mels, frames]
    stitch_seconds: dict  # clip id -> seconds
    invert_seconds: dict  # clip id -> seconds of Griffin-Lim


def inverted_rows(todo: list[dict], params) -> Inverted:
    """The audio, stitched image and timings GeneratorActor.invert_rows put in the rows."""
    import torch

    audio, images, stitch_seconds, invert_seconds = {}, {}, {}, {}
    for r in todo:
        cid = r["clip_id"]
        audio.update({(k, cid): torch.from_numpy(np.frombuffer(r[f"{k}_audio"], dtype=np.float32).copy())
                      for k in ("drums", "bass") if r[f"{k}_audio"]})
        images[cid] = torch.frombuffer(bytearray(r["drums_image"]), dtype=torch.uint8) \
            .reshape(params.n_mels, int(r["n_frames"]))
        stitch_seconds[cid] = float(r["seconds_stitch"])
        invert_seconds[cid] = float(r["seconds_invert"])
    return Inverted(audio, images, stitch_seconds, invert_seconds)


def render_clip(r: dict, inv: Inverted, params, sample_rate: int | None, drums_gain_db: float,
                drums_level: str, s3_endpoint_url: str | None) -> tuple[dict, dict]:
    """One clip's output files as bytes ({"drums", "mix", "mel"}) and its manifest fields: the drums
    at the output rate and at `drums_level` (render.drums_gain_db), their peaks limited
    (render.limit_peaks), mixed with the original bass and scaled where the mix would clip."""
    from pipelines.audio import resample

    from infer import render

    cid = r["clip_id"]
    out_rate = sample_rate or int(r["input_rate"])
    bass = _bass_audio(r, out_rate, inv.audio.get(("bass", cid)), params, s3_endpoint_url)
    n_out = bass.shape[-1]
    drums = resample(inv.audio[("drums", cid)].unsqueeze(0), params.sample_rate, out_rate)
    drums = render.fit_length(drums[0].numpy().astype(np.float64), n_out)
    gain_db = render.drums_gain_db(drums, bass, out_rate, drums_level, drums_gain_db)
    drums = drums * 10 ** (gain_db / 20)
    drums, drums_trim_db = render.limit_peaks(drums, out_rate)  # only the peaks, not the kit's level
    mixed, mix_trim_db = render.peak_safe(render.mix(bass, drums))
    contents = {"drums": render.wav_bytes(drums, out_rate), "mix": render.wav_bytes(mixed, out_rate),
                "mel": render.mel_png_bytes(inv.images[cid].numpy(), params)}
    return contents, {"sample_rate": int(out_rate), "channels": int(bass.shape[0]), "samples": int(n_out),
                      "drums_gain_db": round(gain_db, 3), "drums_trim_db": round(drums_trim_db, 3),
                      "mix_trim_db": round(mix_trim_db, 3)}


def render_batch(batch: dict, params_dict: dict, output: str, sample_rate: int | None,
                 drums_gain_db: float, drums_level: str, s3_endpoint_url: str | None) -> dict:
    """Generated and inverted rows -> drums.wav, mix.wav, drums_mel.png; returns manifest / error rows."""
    from pipelines.mel import MelParams

    from pipelines.storage import is_transient

    from infer.runtime import join_uri, remove_quietly

    params = MelParams.from_dict(params_dict)
    rows = _rows(batch)
    todo = [r for r in rows if not r["error"]]
    results = []

    start = time.perf_counter()
    inv = inverted_rows(todo, params)

    for r in rows:
        base = {"clip_id": str(r["clip_id"]), "input": str(r["input"])}
        if r["error"]:
            results.append({**base, "error": str(r["error"]), "stage": str(r["stage"]),
                            "transient": bool(r["transient"])})
            continue
        cid = r["clip_id"]
        t0 = time.perf_counter()
        try:
            contents, rendered = render_clip(r, inv, params, sample_rate, drums_gain_db, drums_level,
                                             s3_endpoint_url)
            for kind, data in contents.items():
                write_bytes(join_uri(output, cid, OUTPUT_FILES[kind]), data, s3_endpoint_url)
        except (OSError, ValueError, RuntimeError) as err:
            for name in OUTPUT_FILES.values():  # no half set of files that looks like a result
                remove_quietly(join_uri(output, cid, name), s3_endpoint_url)
            results.append({**base, "error": str(err) if is_transient(err) else f"{type(err).__name__}: {err}",
                            "stage": "render", "transient": is_transient(err)})
            continue
        results.append({
            **base, "error": "", "stage": "",
            "duration_s": float(r["input_samples"]) / float(r["input_rate"]),
            "input_sample_rate": int(r["input_rate"]), **rendered, "windows": int(r["n_windows"]),
            "bass_source": "mel window (re-synthesised)" if r["bass_from_mel"] else "original audio",
            "drums_path": f"{cid}/{OUTPUT_FILES['drums']}", "mix_path": f"{cid}/{OUTPUT_FILES['mix']}",
            "mel_path": f"{cid}/{OUTPUT_FILES['mel']}",
            "seconds_decode": float(r["seconds_decode"]), "seconds_generate": float(r["seconds_generate"]),
            "seconds_stitch": inv.stitch_seconds[cid], "seconds_invert": inv.invert_seconds[cid],
            "seconds_mix_write": time.perf_counter() - t0,
        })
    log.debug("rendered %d clips in %.2f s", len(todo), time.perf_counter() - start)
    return {"result": np.array([json.dumps(r) for r in results], dtype=object)}


# ---------------------------------------------------------------- the job


def _checkpoint_info(cfg: GenerateConfig):
    """(checkpoint, config, MelParams): the newest readable checkpoint CHECKPOINT names, loaded once."""
    from pipelines.mel import MelParams
    from train.checkpoint import usable_checkpoint

    checkpoint, config, _ = usable_checkpoint(cfg.checkpoint, cfg.s3_endpoint_url, with_state=False)
    _check_generator_loads(checkpoint, cfg.s3_endpoint_url)
    return checkpoint, config, MelParams.from_dict(config["mel_params"])


def _generator_state(checkpoint: str, s3_endpoint_url: str | None) -> dict:
    from train.checkpoint import read_weights

    return read_weights(checkpoint, s3_endpoint_url)["gen_bass_to_drums"]


def _check_generator_loads(checkpoint: str, s3_endpoint_url: str | None) -> None:
    """Load the generator once on the driver: a broken checkpoint is a clear error, not a dead actor."""
    import pickle

    from pipelines.storage import StorageError
    from train.checkpoint import load_generator

    try:
        load_generator(checkpoint, device="cpu", s3_endpoint_url=s3_endpoint_url)
    except StorageError:
        raise  # a storage fault, not a broken checkpoint: exit 1, a re-run retries it
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise GenerateError(f"cannot load the generator from {checkpoint}: {type(err).__name__}: {err}") from err


def preflight(cfg: GenerateConfig) -> tuple[GenerateConfig, dict]:
    """Every check that needs no Ray: options, paths (made absolute), OUTPUT, checkpoint, inputs.

    Returns the config with resolved paths and the plan `run_generate` carries out.
    """
    from dataclasses import replace

    from pipelines.paths import check_output_outside_inputs
    from pipelines.storage import fsspec_filesystem, local_path_resolved, storage_errors

    cfg.validate()
    cfg = replace(cfg, checkpoint=local_path_resolved(cfg.checkpoint),
                  inputs=[local_path_resolved(u) for u in cfg.inputs],
                  output=local_path_resolved(cfg.output))
    check_output_outside_inputs(cfg.output, {"CHECKPOINT": cfg.checkpoint, "INPUT": cfg.inputs})
    fs, inner = fsspec_filesystem(cfg.output, cfg.s3_endpoint_url)
    with storage_errors("checking", cfg.output):
        if fs.isfile(inner):
            raise GenerateError(f"OUTPUT {cfg.output} is an existing file; give a folder")
    with storage_errors("reading the checkpoint", cfg.checkpoint):
        checkpoint, config, params = _checkpoint_info(cfg)
        plan = {"checkpoint": checkpoint, "config": config, "params": params,
                "generator": (config, _generator_state(checkpoint, cfg.s3_endpoint_url))}
    with storage_errors("listing", " ".join(cfg.inputs)):
        return cfg, _plan_sources(cfg, plan)


def _plan_sources(cfg: GenerateConfig, plan: dict) -> dict:
    from infer.sources import SourceError, is_parquet_source, list_audio

    params = plan["params"]
    parquet = [u for u in cfg.inputs if is_parquet_source(u, cfg.s3_endpoint_url)]
    if parquet:
        if len(cfg.inputs) != 1:
            raise GenerateError("give a Parquet window set as the only INPUT (not mixed with audio)")
        plan.update(kind="parquet", source=parquet[0],
                    n_clips=_parquet_test_rows(parquet[0], params, cfg.s3_endpoint_url))
        return plan
    try:
        clips = list_audio(cfg.inputs, stem="bass", s3_endpoint_url=cfg.s3_endpoint_url)
    except SourceError as err:
        raise GenerateError(str(err)) from err
    plan.update(kind="audio", clips=clips, n_clips=len(clips))
    return plan


def _source_dataset(cfg: GenerateConfig, plan: dict, io):
    """Ray dataset of decoded clips (the plan's audio clips or Parquet test windows), in the
    light tasks `io` describes (cluster.resources.IOTasks)."""
    import ray.data

    params = plan["params"]
    if plan["kind"] == "parquet":
        return _parquet_dataset(cfg, params, plan["source"], io)
    clips = plan["clips"]
    ds = ray.data.from_items([{"clip_id": c.clip_id, "uri": c.uri} for c in clips],
                             override_num_blocks=max(1, len(clips)))
    return ds.map_batches(decode_batch, batch_size=1, batch_format="numpy", **io.map_args(),
                          fn_kwargs={"params_dict": params.to_dict(), "s3_endpoint_url": cfg.s3_endpoint_url})


def _parquet_test_rows(uri: str, params, s3_endpoint_url: str | None) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem
    from pipelines.windows import mel_params_from_schema

    fs, path = arrow_filesystem(uri, s3_endpoint_url)
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        data_params = mel_params_from_schema(dataset.schema)
    except (ValueError, pa.ArrowInvalid) as err:
        raise GenerateError(f"{uri}: {err}") from err
    if data_params != params:
        raise GenerateError(f"{uri} was made with other mel parameters than the checkpoint was trained on "
                            f"({data_params} vs {params})")
    n = dataset.count_rows(filter=pc.field("split") == "test")
    if n == 0:
        raise GenerateError(f"{uri}: no rows in the test split")
    return n


def _parquet_dataset(cfg: GenerateConfig, params, uri: str, io):
    import ray.data
    from ray.data.expressions import col

    from pipelines.storage import arrow_filesystem

    fs, path = arrow_filesystem(uri, cfg.s3_endpoint_url)
    # Every stage says what it reserves: a default 1-CPU read could wait forever behind the actors.
    ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=io.num_cpus).select_columns(
        ["track_id", "split", "window", "bass"])
    ds = ds.filter(expr=col("split") == "test", num_cpus=io.num_cpus)
    return ds.map_batches(parquet_batch, batch_size=64, batch_format="pyarrow", **io.map_args(),
                          fn_kwargs={"params_dict": params.to_dict(), "source": uri})


def generate_in_process(cfg: GenerateConfig, job: dict, clip_ids: list[str], inputs: dict,
                        chunk: int = 4) -> tuple[list[dict], list[dict]]:
    """(manifest rows, error rows) of a few clips generated here, without Ray: the same
    decode, generator, inversion and render functions as the job, on the generator the
    pre-flight loaded, with this process's cores as torch threads.  For a handful of clips
    (evaluate's report audio on a CPU cluster) this costs less than starting an actor pool.
    `inputs`: clip id -> bass file, or "<Parquet window set>#<clip id>"."""
    import os

    params = job["params"]
    actor = GeneratorActor(**generator_kwargs(cfg, job, "cpu", None, os.cpu_count() or 1))
    manifest, errors = [], []
    for i in range(0, len(clip_ids), chunk):
        ids = clip_ids[i:i + chunk]
        if job["kind"] == "parquet":
            batch = _parquet_clips(job["source"], ids, params, cfg.s3_endpoint_url)
        else:
            batch = decode_batch({"clip_id": np.array(ids, dtype=object),
                                  "uri": np.array([inputs[c] for c in ids], dtype=object)},
                                 params.to_dict(), cfg.s3_endpoint_url)
        if len(batch["clip_id"]):
            _split_results(render_batch(actor(batch), params.to_dict(), cfg.output, cfg.sample_rate,
                                        cfg.drums_gain_db, cfg.drums_level, cfg.s3_endpoint_url),
                          manifest, errors)
    return manifest, errors


def _parquet_clips(uri: str, clip_ids: list[str], params, s3_endpoint_url: str | None) -> dict:
    """parquet_batch of the `test` windows named `clip_ids`: their tracks' keys are read first,
    then the bass windows of those tracks only."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem

    from infer.sources import window_clip_id

    fs, path = arrow_filesystem(uri, s3_endpoint_url)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    test = pc.field("split") == "test"
    keys = dataset.to_table(columns=["track_id", "window"], filter=test)
    wanted = set(clip_ids)
    tracks = sorted({t for t, w in zip(keys.column("track_id").to_pylist(), keys.column("window").to_pylist())
                     if window_clip_id(t, w) in wanted})
    table = dataset.to_table(columns=["track_id", "split", "window", "bass"],
                             filter=test & pc.field("track_id").isin(pa.array(tracks, pa.string())))
    table = table.filter([window_clip_id(t, w) in wanted for t, w in
                          zip(table.column("track_id").to_pylist(), table.column("window").to_pylist())])
    table = table.combine_chunks()
    return parquet_batch(table.to_batches()[0] if table.num_rows else table, params.to_dict(), uri)


def run_generate(cfg: GenerateConfig) -> dict:
    """Run the whole generation job; returns the summary (also written to OUTPUT/summary.json)."""
    import pyarrow as pa

    from cluster.ray_runtime import init_ray
    from cluster.resources import ResourceError, plan_model_stage
    from cluster.placement import ending_placement_books, placement_summary, read_placements

    from infer.results import generate_results
    from infer.runtime import join_uri, write_table

    cfg, job = preflight(cfg)
    checkpoint, config, params = job["checkpoint"], job["config"], job["params"]
    n_clips, kind = job["n_clips"], job["kind"]
    # The previous run's set goes aside; OUTPUT is marked incomplete until the commit (infer/results.py).
    results = generate_results(cfg.output, [c.clip_id for c in job.get("clips", [])], cfg.s3_endpoint_url)
    results.begin()
    init_ray(cfg.address)
    start = time.perf_counter()
    try:  # the actors generate and invert (Griffin-Lim): the heavy work; the tasks only decode and write
        plan, book = plan_model_stage(cfg.resources, what="generator", io_cpus=IO_CPUS)
    except ResourceError as err:
        raise GenerateError(str(err)) from err
    log.info("generating drums for %d %s clip(s) with %s (%s); generator: %s", n_clips, kind, checkpoint,
             config.get("model"), plan.describe())
    with ending_placement_books(book):
        if plan.device == "cpu":
            ds = clip_stage(cfg, job, plan, book)
        else:
            ds = render_stage(generator_stage(_source_dataset(cfg, job, plan.io), cfg, job, plan, book),
                              cfg, params, plan.io)
        manifest, errors = _collect_results(ds, n_clips)
        placements = read_placements(book)
    seconds = time.perf_counter() - start

    manifest.sort(key=lambda r: r["clip_id"])
    errors.sort(key=lambda r: r["clip_id"])
    outputs = write_table(pa.Table.from_pylist(manifest, schema=_manifest_schema()), cfg.output, "manifest",
                          cfg.s3_endpoint_url)
    outputs += write_table(pa.Table.from_pylist(errors, schema=_errors_schema()), cfg.output, "errors",
                           cfg.s3_endpoint_url)
    stage_totals = {k[len("seconds_"):]: round(sum(r[k] for r in manifest), 3)
                    for k in ("seconds_decode", "seconds_generate", "seconds_stitch", "seconds_invert",
                              "seconds_mix_write")}
    audio_seconds = sum(r["duration_s"] for r in manifest)
    summary = {
        "checkpoint": checkpoint, "model": config.get("model"), "input_kind": kind, "inputs": cfg.inputs,
        "clips": len(manifest), "errors": len(errors),
        "errors_transient": sum(e["transient"] for e in errors),  # storage faults: a re-run retries
        "audio_seconds": round(audio_seconds, 3),
        "windows": sum(r["windows"] for r in manifest),
        "seconds": {"job": round(seconds, 3), **stage_totals},
        "clips_per_second": round(len(manifest) / seconds, 4) if seconds > 0 else None,
        "realtime_factor": round(audio_seconds / seconds, 3) if seconds > 0 else None,
        "device": plan.device, "generator_actors": plan.size,
        "inversion": f"generator actor ({plan.device})",
        "resources": placement_summary(plan, placements),
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("inputs", "output", "checkpoint")},
        "mel_params": params.to_dict(), "outputs": outputs,
    }
    summary_path = join_uri(cfg.output, "summary.json")
    write_bytes(summary_path, json.dumps(summary, indent=2).encode(), cfg.s3_endpoint_url)
    results.commit()
    log.info("generate: %d clip(s) done, %d error(s), %.1f s of audio in %.1f s", len(manifest), len(errors),
             audio_seconds, seconds)
    return summary


def generator_stage(ds, cfg: GenerateConfig, job: dict, plan, book):
    """`ds` (decoded clips) through the generator actor pool of `plan` (preflight's `job`).

    A GPU actor takes `batch_size` clips per call (their windows fill the GPU's batches);
    a CPU actor a few, so every core's actor gets a share of a small job."""
    from infer.runtime import CLIPS_PER_BLOCK

    return ds.map_batches(
        GeneratorActor, batch_size=cfg.generator_batch if plan.device == "cuda" else CLIPS_PER_BLOCK,
        batch_format="numpy", compute=plan.compute(),
        fn_constructor_kwargs=generator_kwargs(cfg, job, plan.device, book, plan.torch_threads),
        **plan.remote_args())


class ClipActor:
    """On a CPU cluster: a block of clips' whole generation, one actor per core: the decode
    (audio inputs; `before`), the generator and Griffin-Lim (GeneratorActor), the mix and
    the files (render_batch).  One process per core does a clip's work: no task process
    imports torch beside the actors while they start, or shares their cores afterwards."""

    def __init__(self, before, render: dict, **generator):
        self.before, self.render = before, render
        self.generator = GeneratorActor(**generator)

    def __call__(self, batch: dict) -> dict:
        from infer.score_stages import run_steps

        return render_batch(self.generator(run_steps(batch, self.before)), **self.render)


def clip_stage(cfg: GenerateConfig, job: dict, plan, book):
    """A CPU cluster's generation: the inputs through ClipActor (Parquet windows are read in
    the light tasks of plan.io, audio files decoded in the actors)."""
    import ray.data

    from infer.runtime import CLIPS_PER_BLOCK

    params = job["params"]
    if job["kind"] == "parquet":
        ds, before = _parquet_dataset(cfg, params, job["source"], plan.io), []
    else:
        ds = ray.data.from_items([{"clip_id": c.clip_id, "uri": c.uri} for c in job["clips"]])
        before = [(decode_batch, {"params_dict": params.to_dict(), "s3_endpoint_url": cfg.s3_endpoint_url})]
    return ds.map_batches(
        ClipActor, batch_size=CLIPS_PER_BLOCK, batch_format="numpy", compute=plan.compute(),
        fn_constructor_kwargs={"before": before, "render": render_kwargs(cfg, params),
                               **generator_kwargs(cfg, job, plan.device, book, plan.torch_threads)},
        **plan.remote_args())


def generator_kwargs(cfg: GenerateConfig, job: dict, device: str, book=None, torch_threads: int = 1) -> dict:
    """GeneratorActor's constructor arguments for preflight's `job` (the driver's copy of the generator)."""
    return {"checkpoint": job["checkpoint"], "device": device, "batch_size": cfg.generator_batch,
            "variation": cfg.variation, "seed": cfg.seed, "s3_endpoint_url": cfg.s3_endpoint_url,
            "generator": job["generator"], "placements": book, "torch_threads": torch_threads,
            "n_iter": cfg.griffin_lim_iters}


def render_stage(ds, cfg: GenerateConfig, params, io):
    """Generated rows -> the clips' files under cfg.output (the light tasks `io` describes);
    rows of manifest / error JSON."""
    return ds.map_batches(render_batch, batch_size=cfg.generator_batch, batch_format="numpy", **io.map_args(),
                          fn_kwargs=render_kwargs(cfg, params))


def render_kwargs(cfg: GenerateConfig, params) -> dict:
    return {"params_dict": params.to_dict(), "output": cfg.output, "sample_rate": cfg.sample_rate,
            "drums_gain_db": cfg.drums_gain_db, "drums_level": cfg.drums_level,
            "s3_endpoint_url": cfg.s3_endpoint_url}


def _split_results(batch: dict, manifest: list[dict], errors: list[dict]) -> tuple[int, int]:
    """render_batch's result rows -> appended to the manifest / error rows; (rows, errors)."""
    rows = [json.loads(s) for s in batch["result"]]
    bad = [r for r in rows if r["error"]]
    errors += [{"clip_id": r["clip_id"], "input": r["input"], "stage": r["stage"],
                "reason": r["error"], "transient": bool(r.get("transient"))} for r in bad]
    manifest += [{k: v for k, v in r.items() if k not in ("error", "stage", "transient")}
                 for r in rows if not r["error"]]
    return len(rows), len(bad)


def _collect_results(ds, n_clips: int) -> tuple[list[dict], list[dict]]:
    """(manifest rows, error rows) as the job's batches come back."""
    from cluster.node_watch import watching_nodes
    from cluster.placement import broken_gpu_node_as
    from pipelines.storage import storage_faults_in_ray

    from infer.runtime import Progress

    progress = Progress("generate", n_clips)
    manifest, errors = [], []
    with storage_faults_in_ray(), broken_gpu_node_as(GenerateError), watching_nodes("generate"):
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):  # each block as it comes: progress stays current
            progress.update(*_split_results(batch, manifest, errors))
    return manifest, errors


def _manifest_schema():
    import pyarrow as pa

    return pa.schema([
        ("clip_id", pa.string()), ("input", pa.string()), ("duration_s", pa.float64()),
        ("input_sample_rate", pa.int64()), ("sample_rate", pa.int64()), ("channels", pa.int64()),
        ("samples", pa.int64()), ("windows", pa.int64()), ("bass_source", pa.string()),
        ("drums_gain_db", pa.float64()), ("drums_trim_db", pa.float64()), ("mix_trim_db", pa.float64()),
        ("drums_path", pa.string()), ("mix_path", pa.string()), ("mel_path", pa.string()),
        ("seconds_decode", pa.float64()), ("seconds_generate", pa.float64()), ("seconds_stitch", pa.float64()),
        ("seconds_invert", pa.float64()), ("seconds_mix_write", pa.float64()),
    ])


def _errors_schema():
    import pyarrow as pa

    return pa.schema([("clip_id", pa.string()), ("input", pa.string()), ("stage", pa.string()),
                      ("reason", pa.string()), ("transient", pa.bool_())])
