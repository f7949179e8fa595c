"""generate's first stage: bass inputs -> rows holding the generator's input image.

Audio files are read, mixed to mono at the model's mel rate and turned into one mel image
per clip (the generator actor cuts it into windows: pipelines/windowing.py).  A Parquet
window set gives one clip per `test` window, its `bass` image as it is.
"""
from __future__ import annotations

import io
import time

import numpy as np

from pipelines.storage import read_bytes

from infer.generate_rows import empty_columns, new_row, to_columns


def decode_source(uri: str, s3_endpoint_url: str | None):
    """(float32 [frames, channels], rate) of an audio file, local or URL."""
    from pipelines.audio import read_audio

    f = io.BytesIO(read_bytes(uri, s3_endpoint_url))
    f.name = uri  # error messages name the file
    return read_audio(f)


def decode_batch(batch: dict, params_dict: dict, s3_endpoint_url: str | None) -> dict:
    """Bass files -> mel images (one row per clip; a bad file becomes an error row)."""
    from pipelines.audio import AudioError, check_not_silent, to_mono_resampled
    from pipelines.mel import MelParams, audio_to_image
    from pipelines.storage import is_transient
    from pipelines.windowing import window_starts

    from infer.sources import check_long_enough

    params = MelParams.from_dict(params_dict)
    rows = []
    for clip_id, uri in zip(batch["clip_id"], batch["uri"]):
        start = time.perf_counter()
        try:
            data, rate = decode_source(uri, s3_endpoint_url)
            mono = to_mono_resampled(data, rate, params.sample_rate)
            check_not_silent(mono, uri)
            check_long_enough(mono, params, uri)
            image = audio_to_image(mono, params)
        except (AudioError, FileNotFoundError, OSError) as err:
            rows.append(new_row(clip_id=clip_id, input=uri, error=str(err), stage="decode",
                                transient=is_transient(err)))
            continue
        n_frames = image.shape[-1]
        rows.append(new_row(
            clip_id=clip_id, input=uri, bass_input=image.numpy().tobytes(),
            n_windows=len(window_starts(n_frames, params, pad_tail=True)),
            n_frames=n_frames, model_samples=mono.shape[-1], input_rate=rate,
            input_samples=data.shape[0], channels=data.shape[1],
            seconds_decode=time.perf_counter() - start))
    return to_columns(rows)


def window_row(params, clip_id: str, input_name: str, image: bytes, seconds_decode: float = 0.0) -> dict:
    """The row of a clip that is one Parquet bass window (`image`: its bytes); its bass is
    re-synthesised from the window, there being no audio file."""
    return new_row(clip_id=clip_id, input=input_name, bass_input=image, n_windows=1, n_frames=params.window_frames,
                   model_samples=params.window_samples, input_rate=params.sample_rate,
                   input_samples=params.window_samples, channels=1, bass_from_mel=True,
                   seconds_decode=seconds_decode)


def parquet_batch(batch, params_dict: dict, source: str) -> dict:
    """Parquet window rows (pyarrow batch) -> one clip per `test` bass window."""
    from pipelines.mel import MelParams
    from pipelines.windows import binary_to_images

    from pipelines.clip_ids import window_clip_id

    params = MelParams.from_dict(params_dict)
    batch = batch.filter([s == "test" for s in batch.column("split").to_pylist()])
    start = time.perf_counter()
    images = binary_to_images(batch.column("bass"), params)
    seconds = (time.perf_counter() - start) / max(1, batch.num_rows)
    rows = [window_row(params, window_clip_id(track, window), f"{source}#{track}/{window}",
                       np.ascontiguousarray(image).tobytes(), seconds)
            for track, window, image in zip(batch.column("track_id").to_pylist(),
                                            batch.column("window").to_pylist(), images)]
    if not rows:  # a batch with no test rows still needs the columns
        return empty_columns()
    return to_columns(rows)


def parquet_clips(uri: str, clip_ids: list[str], params, s3_endpoint_url: str | None) -> dict:
    """parquet_batch of the `test` windows named `clip_ids`: their tracks' keys are read first,
    then the bass windows of those tracks only."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem

    from pipelines.clip_ids import window_clip_id

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
