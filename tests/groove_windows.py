"""Small mel windows of the test grooves, and a generator run over them: what the learning
tests (test_grooves_learning.py, test_rests_learning.py) train on and judge with."""
from __future__ import annotations

import posixpath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conftest import DATA
from pipelines.mel import MelParams, image_to_model, model_to_image
from pipelines.windows import binary_to_images, track_windows

# 64 bins x 64 frames: the codec of pipelines/windows.py, small enough to train in minutes.
PARAMS = MelParams(n_mels=64, window_frames=64, overlap_frames=16)


def corpus_windows(out: Path, *grooves_args: str) -> pa.Table:
    """`grooves` over the five test takes (3 train, 2 held-out test), cut into windows."""
    from cycledrums_cli import main
    from pipelines.audio import load_audio

    corpus = out / "corpus"
    assert main(["grooves", str(DATA / "groove"), str(corpus), "--in-process", *grooves_args]) == 0
    tables = []
    for folder in sorted(p.parent for p in corpus.rglob("bass.wav")):
        bass = load_audio(folder / "bass.wav", PARAMS.sample_rate)
        drums = load_audio(folder / "drums.wav", PARAMS.sample_rate)
        table, _ = track_windows(folder.name, folder.parent.name, bass, drums, PARAMS)
        tables.append(table)
    return pa.concat_tables(tables)


def write_windows(table: pa.Table, folder: Path) -> str:
    """The table as a one-file window set `train` reads."""
    folder.mkdir()
    pq.write_table(table, posixpath.join(str(folder), "part-0.parquet"))
    return str(folder)


def held_out(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(bass, drums) dB images [n, mels, frames] of the test split's windows."""
    test = table.filter(np.array(table.column("split").to_pylist()) == "test")
    return (np.array(binary_to_images(test.column("bass"), PARAMS)),
            np.array(binary_to_images(test.column("drums"), PARAMS)))


def generate(generator: torch.nn.Module, bass: np.ndarray) -> np.ndarray:
    """The generator's drums for each bass image, as dB images."""
    with torch.no_grad():
        fake = model_to_image(generator(image_to_model(torch.from_numpy(bass)).unsqueeze(1)))
    return fake[:, 0].numpy()
