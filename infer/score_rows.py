"""The `score` / `evaluate` job's rows as they stream back to the driver, kept in memory that does
not grow with the clips' activations.

Each row carries about 3,100 Inception activations and 265 mel features (infer.score_stages);
at the paper's 14,000 clips x 7 sets that is over a gigabyte.  So the driver keeps, per scored
row, only what the summary needs: its ids, timings and the few scalar features (the sanity
ladder's per-clip pairs, the report's ranking), and:
  - per layer and group (each set, each baseline, the real clips of each cross-fitting fold)
    an ActivationStats (infer.density): bounded by d x d, whatever the number of clips;
  - two spill files (local Parquet, deleted when done), each read back in chunks:
      activations-NNNNN.parquet  the activations of the scored and the real clips, for the
                           per-clip densities, which need the real clips' Gaussians and so can only
                           be computed once every row is in: a second pass over these files, a Ray
                           map past RAY_DENSITY_ROWS rows (spill_densities);
      features.parquet     every scored row's whole mel feature vector (the 256 STOI-like
                           correlations), in row order: the grader's inputs and the clips
                           table's columns, written out chunk by chunk (infer.clips_table).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from infer.density import ActivationStats
from infer.features import SCALAR_FEATURES
from infer.inception import LAYERS

# Cross-fitting: with fewer real clips than this in a fold, one Gaussian of all of them.
MIN_FOLD_CLIPS = 4
# Rows per chunk when the spilled activations are read back (about 12 MB a chunk).
SPILL_CHUNK = 1024
# Rows per activations spill file (about 50 MB): the read tasks of the densities' Ray map.
SPILL_FILE_ROWS = 4096
# Spilled rows past which the densities' second pass is a Ray map rather than a loop in the driver
# process.  The loop costs about 0.3 ms a row (6 s for 20,800 rows, 2 cores); the map's start, about
# 10-15 s more there, pays off only on many rows over many CPUs: the paper's 14,000 clips x 7 sets
# (about 100,000 rows) are past it, a CI-sized job is not.
RAY_DENSITY_ROWS = 50_000
# The scalar features are the last columns of a row's mel features (score_stages.mel_feature_names).
N_SCALARS = len(SCALAR_FEATURES)
_FOLDS = ("fold0", "fold1")


def read_spill(path: str, chunk: int):
    """A spill file's record batches of `chunk` rows.  Without pre-buffering: with it, pyarrow's
    reader kept about the whole file in its memory pool by the end (348 MB for a 308 MB spill)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk)


def matrix(column, dim: int) -> np.ndarray:
    """[n, dim] float32 of a fixed-size-list column (a record batch's, or a table's chunked one)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(-1, dim)  # flatten(), unlike .values, honours a slice


def density_folds(clip_ids, seed: int) -> np.ndarray:
    """[n] fold 0 / 1 of each reference clip id: a seeded hash, so the same clip is always in the same fold."""
    from infer.baselines import stable_seed

    return np.array([stable_seed(seed, "density-fold", c) % 2 for c in clip_ids], dtype=int)


def drums_source(batch: dict) -> np.ndarray:
    """The reference clip whose drums a row's image comes from: the partner for other-clip, else its own."""
    from infer.baselines import OTHER

    other = (batch["kind"] == "baseline") & (batch["set"] == OTHER)
    return np.where(other, batch["generated"], batch["reference_id"])


@dataclass
class StreamedRows:
    """What the driver keeps of the job's rows (see the module doc)."""

    seed: int
    scored: dict = field(default_factory=dict)    # columns of the scored rows: no activations, and of
                                                  # the features only "scalars" [n, N_SCALARS]
    errors: dict = field(default_factory=dict)    # columns of the rows that could not be scored
    stats: dict = field(default_factory=dict)     # {layer: {group: ActivationStats}}
    true_ids: list = field(default_factory=list)  # the true-drums rows' clip ids (their activations: the real row's)
    spill_dir: tempfile.TemporaryDirectory | None = None
    n_spilled: int = 0
    n_scored: int = 0
    n_spill_files: int = 0

    @property
    def spill_files(self) -> list[str]:
        return [os.path.join(self.spill_dir.name, f"activations-{i:05d}.parquet") for i in range(self.n_spill_files)]

    @property
    def features_path(self) -> str:
        return os.path.join(self.spill_dir.name, "features.parquet")

    def feature_chunks(self, chunk: int = SPILL_CHUNK):
        """(first row, [m, n features] float32) of the scored rows' mel features, in row order."""
        if not self.n_scored:
            return
        start = 0
        for batch in read_spill(self.features_path, chunk):
            column = batch.column("features")
            values = column.values.to_numpy().reshape(len(column), -1)
            yield start, values
            start += len(values)

    def features_of(self, positions: np.ndarray) -> np.ndarray:
        """The mel features of the scored rows at `positions` (ascending), read from the spill."""
        wanted, parts = np.asarray(positions, np.int64), []
        for start, values in self.feature_chunks():
            inside = wanted[(wanted >= start) & (wanted < start + len(values))]
            parts.append(values[inside - start])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def fold_counts(self) -> list[int]:
        layer = next(iter(LAYERS))
        return [self.stats[layer][f].n if self.stats else 0 for f in _FOLDS]

    @property
    def usable_real(self) -> int:
        return sum(self.fold_counts())

    @property
    def cross_fitted(self) -> bool:
        return min(self.fold_counts()) >= MIN_FOLD_CLIPS

    def real(self, layer: str) -> ActivationStats:
        fold0, fold1 = (self.stats[layer][f] for f in _FOLDS)
        return fold0.merged(fold1)

    def group(self, layer: str, label: str) -> ActivationStats:
        """A set's statistics; the true-drums baseline's are the real clips' (its rows are theirs)."""
        from infer.baselines import TRUE

        if label == TRUE and self.true_ids:
            return self.real(layer)
        return self.stats[layer].get(label) or ActivationStats(LAYERS[layer])

    def close(self) -> None:
        if self.spill_dir is not None:
            self.spill_dir.cleanup()


class RowCollector:
    """Takes the job's batches one at a time into a StreamedRows."""

    def __init__(self, seed: int):
        import pyarrow as pa

        self.rows = StreamedRows(seed, spill_dir=tempfile.TemporaryDirectory(prefix="cycledrums-acts-"))
        self.parts: dict[str, list] = {}
        self.errors: dict[str, list] = {}
        self.schema = pa.schema([("position", pa.int64()), ("source", pa.string())] +
                                [(f"act_{layer}", pa.list_(pa.float32(), d)) for layer, d in LAYERS.items()])
        self.writer = None
        self.rows_in_file = 0
        self.features_writer = None

    def add(self, batch: dict) -> None:
        from infer.baselines import TRUE

        ok = batch["error"] == ""
        for k in ("kind", "set", "clip_id", "generated", "error"):
            self.errors.setdefault(k, []).append(batch[k][~ok])
        real = ok & (batch["kind"] == "real")
        scored = ok & ~real
        true = scored & (batch["kind"] == "baseline") & (batch["set"] == TRUE)
        position = np.full(len(ok), -1, np.int64)
        position[scored] = self.rows.n_scored + np.arange(int(scored.sum()))
        for k, v in batch.items():
            if k == "features":   # the ladder's per-clip figures stay; the whole vector is spilled
                self.parts.setdefault("scalars", []).append(v[scored][:, -N_SCALARS:])
            elif not k.startswith("act_"):
                self.parts.setdefault(k, []).append(v[scored])
        self._spill_features(batch["features"][scored])
        self.rows.true_ids.extend(str(c) for c in batch["clip_id"][true])
        spill = real | (scored & ~true)   # the true-drums rows' activations are their real row's
        self._update_stats(batch, real, scored & ~true)
        self._spill(batch, spill, position, drums_source(batch))

    def _update_stats(self, batch: dict, real: np.ndarray, scored: np.ndarray) -> None:
        folds = density_folds(batch["clip_id"][real], self.rows.seed)
        labels = batch["set"][scored]
        for layer, d in LAYERS.items():
            acts = batch[f"act_{layer}"]
            if layer not in self.rows.stats:
                if not (real | scored).any():
                    continue
                shift = acts[real | scored].astype(np.float64).mean(axis=0)  # shared by every group of the layer
                self.rows.stats[layer] = {f: ActivationStats(d, shift) for f in _FOLDS}
            groups = self.rows.stats[layer]
            for fold, name in enumerate(_FOLDS):
                groups[name].add(acts[real][folds == fold])
            for label in np.unique(labels):
                group = groups.setdefault(str(label), ActivationStats(d, groups[_FOLDS[0]].shift))
                group.add(acts[scored][labels == label])

    def _spill(self, batch: dict, spill: np.ndarray, position: np.ndarray, source: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not spill.any():
            return
        columns = [pa.array(position[spill]), pa.array(source[spill].astype(str))]
        for layer, d in LAYERS.items():
            flat = np.ascontiguousarray(batch[f"act_{layer}"][spill], np.float32).reshape(-1)
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), d))
        if self.writer is None or self.rows_in_file >= SPILL_FILE_ROWS:
            if self.writer is not None:
                self.writer.close()
            self.rows.n_spill_files += 1
            self.writer = pq.ParquetWriter(self.rows.spill_files[-1], self.schema)
            self.rows_in_file = 0
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.rows_in_file += int(spill.sum())
        self.rows.n_spilled += int(spill.sum())

    def _spill_features(self, features: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not len(features):
            return
        flat = np.ascontiguousarray(features, np.float32)
        table = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])})
        if self.features_writer is None:
            self.features_writer = pq.ParquetWriter(self.rows.features_path, table.schema)
        self.features_writer.write_table(table)
        self.rows.n_scored += len(features)

    def finish(self) -> StreamedRows:
        for writer in (self.writer, self.features_writer):
            if writer is not None:
                writer.close()
        self.rows.scored = {k: np.concatenate(v) for k, v in self.parts.items()}
        self.rows.errors = {k: np.concatenate(v) for k, v in self.errors.items()}
        self.parts = self.errors = {}
        return self.rows


def collect(ds, n_reference: int, seed: int) -> StreamedRows:
    """The job's rows, batch by batch as they come (progress logged per reference clip), into a StreamedRows."""
    from cluster.console import Progress
    from infer.score_inputs import ScoreError

    progress = Progress("score (reference clips)", n_reference)
    collector = RowCollector(seed)
    seen = False
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):  # each block as it comes
            seen = True
            collector.add(batch)
            real = batch["kind"] == "real"
            progress.update(int(real.sum()), int((real & (batch["error"] != "")).sum()))
        if not seen:
            raise ScoreError("the job returned no rows")
        return collector.finish()
    except BaseException:
        collector.rows.close()
        raise


def densities(rows: StreamedRows, real_fits: dict) -> dict[str, np.ndarray]:
    """{layer: [n scored] log-density per dimension} of each scored row's activations under the
    Gaussian of the real clips of the OTHER fold (one Gaussian of all real clips when a fold has
    fewer than MIN_FOLD_CLIPS).  A clip is never scored by a Gaussian fitted on its own reference
    clip: in-sample, the true drums (and anything close to them) would get an inflated density with
    few clips in many dimensions.  `real_fits`: {layer: {covariance: Gaussian of all real clips}}."""
    from infer.density import LEDOIT_WOLF

    n = len(rows.scored.get("kind", ()))
    out = {layer: np.zeros(n) for layer in LAYERS}
    by_clip: dict[str, dict[str, float]] = {layer: {} for layer in LAYERS}
    if rows.cross_fitted:  # fold k's rows are judged by the other fold's Gaussian
        fits = {layer: [rows.stats[layer][_FOLDS[1 - k]].fit() for k in (0, 1)] for layer in LAYERS}
    else:
        fits = {layer: [real_fits[layer].setdefault(LEDOIT_WOLF, rows.real(layer).fit())] * 2 for layer in LAYERS}
    for part in spill_densities(rows, fits):
        position, source = part["position"], part["source"]
        scored = position >= 0
        for layer in LAYERS:
            ll = part[f"ll_{layer}"]
            out[layer][position[scored]] = ll[scored]
            by_clip[layer].update(zip(source[~scored], ll[~scored]))
    _true_drums_densities(rows, out, by_clip)
    return out


def _true_drums_densities(rows: StreamedRows, out: dict, by_clip: dict) -> None:
    """The true-drums rows are their real rows: the same densities."""
    from infer.baselines import TRUE

    if not rows.true_ids:
        return
    true = np.flatnonzero((rows.scored["kind"] == "baseline") & (rows.scored["set"] == TRUE))
    for layer in LAYERS:
        out[layer][true] = [by_clip[layer][str(c)] for c in rows.scored["clip_id"][true]]


def chunk_densities(chunk, fits: dict, seed: int, cross_fitted: bool) -> dict[str, np.ndarray]:
    """One chunk of the activations spill (a record batch or table) -> its rows' position and
    drums source, and ll_<layer>: each row's log-density under fits[layer][k], k the fold of its
    drums' reference clip (0 for every row when not cross-fitted); densities() puts the OTHER
    fold's Gaussian at k."""
    position = chunk.column("position").to_numpy()
    source = np.asarray(chunk.column("source").to_pylist(), dtype=object)
    fold = density_folds(source, seed) if cross_fitted else np.zeros(len(source), int)
    out = {"position": position, "source": source}
    for layer, (fit0, fit1) in fits.items():
        acts = matrix(chunk.column(f"act_{layer}"), fit0.dim)
        ll = np.zeros(len(acts))
        for k, fit in ((0, fit0), (1, fit1)):
            if (fold == k).any():
                ll[fold == k] = fit.log_likelihood(acts[fold == k])
        out[f"ll_{layer}"] = ll
    return out


def spill_densities(rows: StreamedRows, fits: dict):
    """chunk_densities of every spilled row, a chunk at a time: with the job's Ray up and past
    RAY_DENSITY_ROWS rows as a Ray Data map (ChunkDensities actors), else in this process."""
    import ray

    if not rows.n_spilled:
        return
    if ray.is_initialized() and rows.n_spilled >= RAY_DENSITY_ROWS:
        yield from _densities_in_ray(rows, fits)
        return
    for path in rows.spill_files:
        for chunk in read_spill(path, SPILL_CHUNK):
            yield chunk_densities(chunk, fits, rows.seed, rows.cross_fitted)


class ChunkDensities:
    """The densities' map: each actor takes the fitted Gaussians from the object store once."""

    def __init__(self, fits_ref: list, seed: int, cross_fitted: bool):
        import ray

        self.fits = ray.get(fits_ref[0])  # in a list: Ray resolves only top-level refs itself
        self.seed, self.cross_fitted = seed, cross_fitted

    def __call__(self, batch) -> dict[str, np.ndarray]:
        return chunk_densities(batch, self.fits, self.seed, self.cross_fitted)


def _densities_in_ray(rows: StreamedRows, fits: dict):
    """The spill files live on the driver's disk: their read tasks are pinned to the driver's node
    (the head, for a Ray job), a file each, and take no CPU (a head often has none to give); the
    actors run wherever CPUs are free.  The driver gets back only positions, ids and a few floats
    per row."""
    import ray
    import ray.data
    from ray.util.placement_group import NODE_ID_LABEL_KEY

    here = {NODE_ID_LABEL_KEY: ray.get_runtime_context().get_node_id()}  # every node carries its id as a label
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, min(cpus, -(-rows.n_spilled // SPILL_CHUNK)))
    ds = ray.data.read_parquet(rows.spill_files, label_selector=here, num_cpus=0)
    ds = ds.map_batches(ChunkDensities, batch_format="pyarrow", batch_size=SPILL_CHUNK, num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                        fn_constructor_kwargs={"fits_ref": [ray.put(fits)], "seed": rows.seed,
                                               "cross_fitted": rows.cross_fitted})
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        yield batch
