"""Peak memory of `score`'s driver as the clips grow: does it hold every row's activations?

The driver's part of a score / evaluate job (infer.score_rows and the densities and
Fréchet distances of infer.score_summary) on synthetic rows of the job's shape: per
reference clip a real row and a generated row, each with Inception activations of the
real layer sizes (288 + 768 + 2,048 float32) and 256 + 6 mel features; no Ray job, no
Inception (the rows are what the Ray job would hand back).  After the rows come in:
the densities and Fréchet distances, a grader (trained on 200 clips, over every
feature) applied to every clip, and clips.parquet / .csv written to a temp folder, as
score's driver does.  With --ray N a local Ray of N CPUs is up, as in the job, so the
densities' second pass and the grader run as Ray maps past their thresholds (50,000 spilled
rows, or --density-map-rows; 5,000 clips).  Each size runs in a fresh process; its peak RSS
(ru_maxrss) over its RSS after the imports is what the driver added.  With more clips than
dimensions (pool3: 2,048) the activation statistics stop growing; what still grows is the light
per-clip table (ids, the 6 scalar features, densities, predictions, timings).

    .venv/bin/python benchmarks/bench_score_driver.py [--clips 2100 --growth 4] [--ray 4 [--density-map-rows 5000]]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

PER_BATCH = 64  # reference clips per batch (a block of the job's output)
N_MELS = 256
N_FEATURES = N_MELS + 6  # the STOI-like vector, then the scalar features (infer.features)


def job_batches(n_reference: int):
    """The job's output, batch by batch, made as it is asked for."""
    from infer.inception import LAYERS

    for start in range(0, n_reference, PER_BATCH):
        rng = np.random.default_rng(start)
        ids = [f"c{i:06d}" for i in range(start, min(n_reference, start + PER_BATCH))]
        n = 2 * len(ids)
        batch = {"kind": np.array(["real", "generated"] * len(ids), dtype=object),
                 "set": np.array(["reference", "model"] * len(ids), dtype=object),
                 "clip_id": np.repeat(np.array(ids, dtype=object), 2),
                 "reference_id": np.repeat(np.array(ids, dtype=object), 2),
                 "generated": np.array([""] * n, dtype=object), "error": np.array([""] * n, dtype=object),
                 "features": rng.standard_normal((n, N_FEATURES)).astype(np.float32),
                 "seconds_features": np.zeros(n), "seconds_inception": np.zeros(n),
                 "drums_active": np.ones(n, bool)}
        for layer, d in LAYERS.items():
            batch[f"act_{layer}"] = rng.gamma(2.0, 0.5, (n, d)).astype(np.float32)
        yield batch


class SyntheticJob:
    """What collect needs of the Ray dataset."""

    def __init__(self, n_reference: int):
        self.n_reference = n_reference

    def iter_batches(self, batch_format: str, batch_size=None):
        return job_batches(self.n_reference)


def driver_side(n_reference: int, collect_only: bool, ray_cpus: int, density_map_rows: int | None) -> dict:
    """Collect the rows, then (unless `collect_only`) the densities and distances, as score's driver
    does; peak MB added."""
    import resource

    import psutil

    from infer import score_rows
    from infer.score_rows import collect

    if density_map_rows:
        score_rows.RAY_DENSITY_ROWS = density_map_rows
    if ray_cpus:
        import ray

        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    start_mb = psutil.Process().memory_info().rss / 2 ** 20
    t0 = time.perf_counter()
    rows = collect(SyntheticJob(n_reference), n_reference, seed=0)
    t1 = time.perf_counter()
    fid = None
    try:
        if not collect_only:
            fid = summary_side(rows)
    finally:
        rows.close()
    seconds = {"collect": round(t1 - t0, 1), "summary": round(time.perf_counter() - t1, 1)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"reference_clips": n_reference, "rows": 2 * n_reference, "peak_mb": round(peak_mb),
            "added_mb": round(peak_mb - start_mb), "fid_pool3": fid, "seconds": seconds}


def summary_side(rows) -> float:
    """Densities, distances, the grader on every clip and the clips table, as score's finish; FID pool3."""
    import tempfile

    import pandas as pd

    from infer.clips_table import grader_matrix, write_clips_table
    from infer.features import SCALAR_FEATURES
    from infer.grader import train_grader
    from infer.score_stages import mel_feature_names
    from infer.score_summary import _densities_and_distances, predict_rows

    table = pd.DataFrame({"set": rows.scored["set"].astype(str), "clip_id": rows.scored["clip_id"].astype(str)})
    table = pd.concat([table, pd.DataFrame(rows.scored["scalars"], columns=list(SCALAR_FEATURES))], axis=1)
    fid = _densities_and_distances(table, rows, ["model"])["model"]["pool3"]["value"]
    names = mel_feature_names(N_MELS) + [c for c in table.columns if c.startswith("density_")]
    graded = np.arange(200)
    x = grader_matrix(table.iloc[graded], rows.features_of(graded), names, N_MELS)
    grader = train_grader(x, graded % 4, names)
    table["bucket_pred"], probs = predict_rows(grader, table, rows, names, N_MELS)
    for b in range(probs.shape[1]):
        table[f"prob_{b}"] = probs[:, b]
    with tempfile.TemporaryDirectory() as out:
        write_clips_table(table, rows, N_MELS, out, None)
    return fid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2100, help="reference clips at 1x (default 2100: above pool3's "
                                                            "2,048 dimensions, where the statistics stop growing)")
    ap.add_argument("--growth", type=int, default=4, help="the larger run's multiple of --clips (default 4)")
    ap.add_argument("--collect-only", action="store_true",
                    help="only the rows coming back (no densities, distances, grader or clips table: the "
                         "density fits dominate the time)")
    ap.add_argument("--ray", type=int, default=0, metavar="CPUS",
                    help="start a local Ray with CPUS logical CPUs first, as the job has one (default: none)")
    ap.add_argument("--density-map-rows", type=int, metavar="N",
                    help="spilled rows past which the densities' pass is a Ray map (default: the job's, 50,000)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(driver_side(args.child, args.collect_only, args.ray, args.density_map_rows)))
        return
    runs = []
    for n in (args.clips, args.clips * args.growth):
        extra = (["--collect-only"] if args.collect_only else []) + \
            (["--density-map-rows", str(args.density_map_rows)] if args.density_map_rows else [])
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--ray", str(args.ray)] + extra,
                             check=True, capture_output=True,
                             text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{n} reference clips ({2 * n} rows): driver peak RSS {runs[-1]['peak_mb']} MB, "
              f"{runs[-1]['added_mb']} MB added by the job's rows and summary; seconds {runs[-1]['seconds']}")
    small, big = runs
    print(f"x{args.growth} the clips: driver memory added x{big['added_mb'] / max(1, small['added_mb']):.2f}, "
          f"peak RSS x{big['peak_mb'] / small['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
