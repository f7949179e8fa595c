"""generate's last stage: generated rows -> drums.wav, mix.wav and drums_mel.png per clip.

The drums at the output rate and at the chosen level (infer.render.drums_gain_db), their
peaks limited, mixed with the ORIGINAL bass audio (re-read from the input; for Parquet
input the bass re-synthesised from its mel window); evaluate renders its drums with the
same functions (inverted_rows, render_clip).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from pipelines.storage import write_bytes

from infer.generate_decode import decode_source
from infer.generate_rows import row_image, to_rows

log = logging.getLogger(__name__)

OUTPUT_FILES = {"drums": "drums.wav", "mix": "mix.wav", "mel": "drums_mel.png"}


def bass_audio(row: dict, out_rate: int, bass_mel_audio, params, s3_endpoint_url: str | None) -> np.ndarray:
    """[channels, n] bass at `out_rate`: the original file (re-read), or the re-synthesised window."""
    import torch

    from pipelines.audio import resample

    if row["bass_from_mel"]:
        signal, rate = bass_mel_audio.unsqueeze(0), params.sample_rate
    else:
        data, rate = decode_source(str(row["input"]), s3_endpoint_url)
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
    """The audio, stitched image and timings GeneratorActor put in the rows."""
    import torch

    audio, images, stitch_seconds, invert_seconds = {}, {}, {}, {}
    for r in todo:
        cid = r["clip_id"]
        audio.update({(k, cid): torch.from_numpy(np.frombuffer(r[f"{k}_audio"], dtype=np.float32).copy())
                      for k in ("drums", "bass") if r[f"{k}_audio"]})
        images[cid] = row_image(r, "drums_image", params)
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
    bass = bass_audio(r, out_rate, inv.audio.get(("bass", cid)), params, s3_endpoint_url)
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

    from infer.job_io import join_uri, remove_quietly

    params = MelParams.from_dict(params_dict)
    rows = to_rows(batch)
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
