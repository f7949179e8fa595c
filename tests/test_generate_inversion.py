"""Generate inverts mel to audio in the generator actor; render_batch can invert rows too.

Both paths must give the same files (Griffin-Lim starts from zero phase, so it is
deterministic): here both run on CPU, the actor path exactly as it runs on a GPU node.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from infer.generate import GeneratorActor, decode_batch, render_batch
from pipelines.mel import MelParams
from test_generate import write_tiny_checkpoint

DATA = Path(__file__).parent / "data"
PARAMS = MelParams()


def test_inverting_in_the_generator_actor_gives_the_same_files_as_the_render_tasks(tmp_path):
    checkpoint = str(write_tiny_checkpoint(tmp_path / "checkpoint_000000"))
    decoded = decode_batch({"clip_id": np.array(["lithium"], dtype=object),
                            "uri": np.array([str(DATA / "lithium_bass_8s.flac")], dtype=object)},
                           PARAMS.to_dict(), None)
    results = {}
    for invert in (False, True):
        actor = GeneratorActor(checkpoint, "cpu", 4, 0.0, 0, invert=invert, n_iter=4)
        batch = actor({k: v.copy() for k, v in decoded.items()})
        assert bool(batch["drums_audio"][0]) == invert  # the actor inverted only when asked
        out = tmp_path / f"invert-{invert}"
        (row,) = [json.loads(r) for r in render_batch(batch, PARAMS.to_dict(), str(out), 4, None, 0.0, None)["result"]]
        assert row["error"] == "" and row["seconds_invert"] > 0
        results[invert] = (row, {name: (out / "lithium" / name).read_bytes()
                                 for name in ("drums.wav", "mix.wav", "drums_mel.png")})
    (row_cpu, files_cpu), (row_actor, files_actor) = results[False], results[True]
    assert files_cpu == files_actor
    same = {k for k in row_cpu if not k.startswith("seconds_")}
    assert {k: row_cpu[k] for k in same} == {k: row_actor[k] for k in same}

