"""The generator actor inverts its batch's clips together (one batched Griffin-Lim over
clips of different lengths); each clip must come out as if inverted alone, and the
render stage writes exactly that audio."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from infer import render
from infer.generate_actor import GeneratorActor
from infer.generate_decode import decode_batch
from infer.generate_render import inverted_rows, render_batch
from pipelines.audio import load_audio
from pipelines.mel import MelParams
from test_generate import write_tiny_checkpoint

DATA = Path(__file__).parent / "data"
PARAMS = MelParams()
N_ITER = 4


def test_a_batch_of_clips_of_different_lengths_inverts_as_each_clip_alone(tmp_path):
    checkpoint = str(write_tiny_checkpoint(tmp_path / "checkpoint_000000"))
    clips = {"lithium": DATA / "lithium_bass_8s.flac", "fishin": DATA / "lets_go_fishin_13s.ogg"}
    decoded = decode_batch({"clip_id": np.array(list(clips), dtype=object),
                            "uri": np.array([str(p) for p in clips.values()], dtype=object)}, PARAMS.to_dict(), None)
    batch = GeneratorActor(checkpoint, "cpu", 4, 0.0, 0, n_iter=N_ITER)({k: v.copy() for k, v in decoded.items()})
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    assert [r["error"] for r in rows] == ["", ""]
    inv = inverted_rows(rows, PARAMS)
    for r in rows:
        alone = render.invert_images([inv.images[r["clip_id"]]], [int(r["model_samples"])], PARAMS, N_ITER)[0]
        batched = inv.audio[("drums", r["clip_id"])]
        assert batched.shape == alone.shape and inv.invert_seconds[r["clip_id"]] > 0
        torch.testing.assert_close(batched, alone.float(), atol=1e-4, rtol=1e-4)

    out = tmp_path / "out"
    results = [json.loads(x) for x in render_batch(batch, PARAMS.to_dict(), str(out), None, 0.0, "model", None)["result"]]
    assert [x["error"] for x in results] == ["", ""]
    for x in results:  # the written drums are that audio, through the peak limiter
        written = load_audio(str(out / x["drums_path"]), PARAMS.sample_rate).numpy().reshape(-1)
        inverted = inv.audio[("drums", x["clip_id"])].numpy().astype(np.float64)
        # At the default level ("model") the drums keep the level the generator drew: no gain,
        # only the limiter (run here at the mel rate, in generate at the output rate).
        assert x["drums_gain_db"] == 0.0 and x["drums_trim_db"] <= 0.0
        limited, _ = render.limit_peaks(inverted, PARAMS.sample_rate)
        n = min(len(written), len(limited))
        corr = np.corrcoef(written[:n], limited[:n])[0, 1]
        assert corr > 0.99, (x["clip_id"], corr)
        level_db = 20 * np.log10(np.sqrt(np.mean(written[:n] ** 2) / np.mean(limited[:n] ** 2)))
        assert abs(level_db) < 0.2, x["clip_id"]
