"""score / evaluate's driver keeps what the summary needs of the job's rows, not every row's
activations: bounded Gaussian statistics per set, and a spill file read back in chunks for the
per-clip densities (infer.score_rows).  No Ray: a stand-in dataset yields the job's batches."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from infer import score_rows
from infer.baselines import OTHER, TRUE
from infer.density import fit_gaussian

# Small layers, so that a CI-sized job has many more clips than dimensions (the paper's 14,000
# clips against 2,048 for pool3): the statistics must then stop growing.
DIMS = {"mixed_5d": 48, "mixed_6e": 96, "pool3": 192}
PER_BATCH = 32  # reference clips per batch
N_MELS = 8
N_FEATURES = N_MELS + score_rows.N_SCALARS  # the STOI-like vector, then the scalar features
ONE = 16  # batches at 1x: every group (a fold of the real clips, a set) has more clips than any layer's dims


@pytest.fixture(autouse=True)
def small_layers(monkeypatch):
    monkeypatch.setattr(score_rows, "LAYERS", DIMS)


def _batch(b: int) -> dict:
    """Batch b of a job: per reference clip a real row, a generated row and two baselines (true
    drums: zero activations, as the Inception stage leaves them; other clip); the first clip's
    generated row failed."""
    rng = np.random.default_rng(b)
    ids = [f"c{b:04d}-{i:02d}" for i in range(PER_BATCH)]
    rows = []
    for i, cid in enumerate(ids):
        partner = ids[(i + 1) % PER_BATCH]
        rows += [("real", "reference", cid, cid, "", ""), ("generated", "model", cid, cid, f"/g/{cid}.wav",
                                                           "unreadable" if i == 0 else ""),
                 ("baseline", TRUE, cid, cid, "", ""), ("baseline", OTHER, cid, cid, partner, "")]
    cols = {k: np.array(v, dtype=object) for k, v in zip(
        ("kind", "set", "clip_id", "reference_id", "generated", "error"), zip(*rows))}
    n = len(rows)
    cols["features"] = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    cols["seconds_features"] = np.full(n, 0.01)
    cols["seconds_inception"] = np.full(n, 0.02)
    cols["drums_active"] = np.ones(n, bool)
    for layer, d in DIMS.items():
        acts = (rng.standard_normal((n, d)) + 3.0).astype(np.float32)
        acts[(cols["set"] == TRUE) | (cols["error"] != "")] = 0.0
        cols[f"act_{layer}"] = acts
    return cols


class _Job:
    """What collect needs of a Ray dataset: its batches, one at a time, made as they are asked for."""

    def __init__(self, n_batches: int):
        self.n_batches = n_batches

    def iter_batches(self, batch_format: str, batch_size=None):
        for b in range(self.n_batches):
            yield _batch(b)


def _stats_bytes(rows) -> int:
    total = 0
    for groups in rows.stats.values():
        for stats in groups.values():
            total += sum(x.nbytes for x in stats.rows)
            total += sum(v.nbytes for v in (stats.moments or {}).values() if isinstance(v, np.ndarray))
    return total


def test_the_driver_keeps_no_activations_and_statistics_that_do_not_grow_with_the_clips():
    one = score_rows.collect(_Job(ONE), ONE * PER_BATCH, seed=0)
    four = score_rows.collect(_Job(4 * ONE), 4 * ONE * PER_BATCH, seed=0)
    try:
        for rows, n_ref in ((one, ONE * PER_BATCH), (four, 4 * ONE * PER_BATCH)):
            assert not [k for k in rows.scored if k.startswith("act_")]
            assert "features" not in rows.scored                                    # spilled, not kept
            assert rows.scored["scalars"].shape == (len(rows.scored["kind"]), score_rows.N_SCALARS)
            assert len(rows.scored["kind"]) == 3 * n_ref - n_ref // PER_BATCH      # all but the failed rows
            assert list(rows.errors["error"]) == ["unreadable"] * (n_ref // PER_BATCH)
            assert rows.usable_real == n_ref and rows.cross_fitted
            assert rows.n_spilled == 3 * n_ref - n_ref // PER_BATCH  # real + generated + other-clip rows
            assert rows.group("pool3", TRUE).n == n_ref
        assert set(four.stats["pool3"]) == {"fold0", "fold1", "model", OTHER}
        assert _stats_bytes(four) == _stats_bytes(one)
    finally:
        one.close()
        four.close()


def _collect_peak(n_batches: int) -> int:
    """Peak bytes allocated while collecting, with the result kept alive (as run_score keeps it)."""
    tracemalloc.start()
    rows = score_rows.collect(_Job(n_batches), n_batches * PER_BATCH, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.close()
    return peak


def test_driver_memory_grows_by_a_small_fraction_of_the_activations():
    """All rows in memory (the old collect) grows by twice the activations and features from 1x to 4x
    (kept, then concatenated); streaming grows by the few scalars kept per scored row."""
    act_bytes_per_batch = 4 * PER_BATCH * 4 * (sum(DIMS.values()) + N_FEATURES)
    _collect_peak(1)  # the first call's imports are not the rows' memory
    one, four = _collect_peak(ONE), _collect_peak(4 * ONE)
    assert four - one < 0.25 * 3 * ONE * act_bytes_per_batch, (one, four)


def test_streamed_densities_equal_the_gaussian_of_the_other_folds_real_clips():
    """The second pass over the spill file gives what fitting every row at once gives."""
    rows = score_rows.collect(_Job(12), 384, seed=3)
    try:
        fits = {layer: {} for layer in DIMS}
        densities = score_rows.densities(rows, fits)
    finally:
        rows.close()
    batches = [_batch(b) for b in range(12)]
    cols = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    ok = cols["error"] == ""
    real, scored = ok & (cols["kind"] == "real"), ok & (cols["kind"] != "real")
    real_fold = score_rows.density_folds(cols["clip_id"][real], 3)
    source = score_rows.drums_source(cols)[scored]
    row_fold = score_rows.density_folds(source, 3)
    is_true = cols["set"][scored] == TRUE
    for layer in DIMS:
        acts = cols[f"act_{layer}"].astype(np.float64)
        by_clip = dict(zip(cols["clip_id"][real], acts[real]))
        scored_acts = acts[scored].copy()
        scored_acts[is_true] = [by_clip[c] for c in cols["clip_id"][scored][is_true]]  # its real row
        expected = np.zeros(scored.sum())
        for fold in (0, 1):
            gaussian = fit_gaussian(acts[real][real_fold != fold])
            expected[row_fold == fold] = gaussian.log_likelihood(scored_acts[row_fold == fold])
        np.testing.assert_allclose(densities[layer], expected, rtol=1e-9, atol=1e-9)


def _all_columns(n_batches: int) -> dict:
    batches = [_batch(b) for b in range(n_batches)]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_the_spilled_features_come_back_in_row_order():
    rows = score_rows.collect(_Job(5), 5 * PER_BATCH, seed=0)
    try:
        cols = _all_columns(5)
        expected = cols["features"][(cols["error"] == "") & (cols["kind"] != "real")]
        got = np.concatenate([f for _, f in rows.feature_chunks(chunk=50)])
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(rows.scored["scalars"], expected[:, -score_rows.N_SCALARS:])
        picked = np.array([0, 49, 50, 51, len(expected) - 1])
        np.testing.assert_array_equal(rows.features_of(picked), expected[picked])
    finally:
        rows.close()


def test_the_clips_table_written_in_chunks_is_the_whole_table(tmp_path, monkeypatch):
    """clips.parquet / .csv, joined from the light table and the spill a chunk at a time (chunks smaller
    than the table), hold every row with the STOI-like columns in place, as one in-memory table would."""
    import pandas as pd

    from infer import clips_table
    from infer.features import stoi_names

    monkeypatch.setattr(clips_table, "WRITE_CHUNK", 37)
    rows = score_rows.collect(_Job(3), 3 * PER_BATCH, seed=0)
    try:
        n = len(rows.scored["kind"])
        light = pd.DataFrame({"set": rows.scored["set"].astype(str), "clip_id": rows.scored["clip_id"].astype(str)})
        light = pd.concat([light, pd.DataFrame(rows.scored["scalars"], columns=list(score_rows.SCALAR_FEATURES))],
                          axis=1)
        light["density_pool3"] = np.arange(n, dtype=float)
        uris = clips_table.write_clips_table(light, rows, N_MELS, str(tmp_path), None)
    finally:
        rows.close()
    assert uris == [str(tmp_path / "clips.parquet"), str(tmp_path / "clips.csv")]
    cols = _all_columns(3)
    features = cols["features"][(cols["error"] == "") & (cols["kind"] != "real")]
    expected = pd.concat([light.iloc[:, :2], pd.DataFrame(features, columns=stoi_names(N_MELS) +
                                                          list(score_rows.SCALAR_FEATURES))], axis=1)
    expected["density_pool3"] = np.arange(n, dtype=float)
    written = pd.read_parquet(tmp_path / "clips.parquet")
    pd.testing.assert_frame_equal(written, expected)
    from_csv = pd.read_csv(tmp_path / "clips.csv")
    assert list(from_csv.columns) == list(expected.columns) and len(from_csv) == n
    np.testing.assert_allclose(from_csv[stoi_names(N_MELS)].to_numpy(), features[:, :N_MELS], rtol=1e-6)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_the_grader_reads_its_inputs_from_the_spill_with_the_same_predictions():
    """The grader's inputs, a chunk at a time from the light table and the spill, equal the whole
    table's columns; so do its predictions."""
    import pandas as pd

    from infer import score_summary
    from infer.clips_table import grader_matrix
    from infer.features import stoi_names
    from infer.grader import train_grader

    rows = score_rows.collect(_Job(4), 4 * PER_BATCH, seed=0)
    try:
        n = len(rows.scored["kind"])
        light = pd.DataFrame(rows.scored["scalars"], columns=list(score_rows.SCALAR_FEATURES))
        light["density_pool3"] = np.linspace(-1, 1, n)
        names = ["stoi_001", "stoi_007", "spectrum_match", "density_pool3"]
        cols = _all_columns(4)
        full = pd.DataFrame(cols["features"][(cols["error"] == "") & (cols["kind"] != "real")],
                            columns=stoi_names(N_MELS) + list(score_rows.SCALAR_FEATURES))
        full["density_pool3"] = light["density_pool3"]
        x = full[names].to_numpy(np.float64)
        picked = np.array([3, 10, 200])
        np.testing.assert_array_equal(grader_matrix(light.iloc[picked], rows.features_of(picked), names, N_MELS),
                                      x[picked])
        y = np.arange(n) % 4
        grader = train_grader(x, y, names)
        buckets, probs = score_summary.predict_rows(grader, light, rows, names, N_MELS)
    finally:
        rows.close()
    expected_buckets, expected_probs = grader.predict(x)
    np.testing.assert_array_equal(buckets, expected_buckets)
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-12)


@pytest.mark.timeout(180)
def test_the_densities_ray_map_equals_the_pass_in_the_driver(ray_task_names, monkeypatch):
    """Past RAY_DENSITY_ROWS spilled rows the second pass runs as a Ray Data map over the spill
    files (read on the driver's node): the same densities as the loop in the driver process."""
    monkeypatch.setattr(score_rows, "SPILL_FILE_ROWS", 256)  # 1,140 spilled rows, 95 a batch: 4 files
    monkeypatch.setattr(score_rows, "SPILL_CHUNK", 128)
    rows = score_rows.collect(_Job(12), 384, seed=3)
    try:
        assert rows.n_spill_files == 4
        in_driver = score_rows.densities(rows, {layer: {} for layer in DIMS})
        monkeypatch.setattr(score_rows, "RAY_DENSITY_ROWS", 1000)
        in_ray = score_rows.densities(rows, {layer: {} for layer in DIMS})
    finally:
        rows.close()
    assert any("ChunkDensities" in name for name in ray_task_names("ChunkDensities"))
    for layer in DIMS:
        assert np.isfinite(in_ray[layer]).all()
        np.testing.assert_allclose(in_ray[layer], in_driver[layer], rtol=1e-9, atol=1e-9)
