"""The per-clip densities' Ray map on a real two-node cluster whose head has no CPU, as a
production head is set up (cluster/kuberay/raycluster.yaml): the spill files' read tasks run on
the driver's node (the head), where the files are, taking no CPU, and the map's actors on the
worker node, which has every CPU; the densities equal the driver's own pass.  The driver is a
subprocess, since the test session's own Ray is already up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import ray_nodes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

DRIVER = """
import json, sys
import numpy as np
import ray
sys.path.insert(0, %(tests)r)
from infer import score_rows
import test_score_streaming as job

score_rows.LAYERS = job.DIMS
score_rows.SPILL_FILE_ROWS, score_rows.SPILL_CHUNK = 256, 128
ray.init(address=%(address)r, log_to_driver=False)
rows = score_rows.collect(job._Job(12), 384, seed=3)
in_driver = score_rows.densities(rows, {layer: {} for layer in job.DIMS})
score_rows.RAY_DENSITY_ROWS = 1000
in_ray = score_rows.densities(rows, {layer: {} for layer in job.DIMS})
rows.close()
nodes = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
print(json.dumps({
    "max_diff": max(float(np.abs(in_ray[l] - in_driver[l]).max()) for l in job.DIMS),
    "finite": all(bool(np.isfinite(in_ray[l]).all()) for l in job.DIMS),
    "driver_node_cpus": nodes[ray.get_runtime_context().get_node_id()],
}))
"""


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPU and one worker node with 2."""
    cluster = ray_nodes.start(head_cpus=0, worker_cpus=[2])
    yield cluster
    cluster.stop()


@pytest.mark.timeout(600)
def test_the_densities_map_reads_on_the_drivers_node_and_runs_on_a_cpu_node(cluster):
    script = DRIVER % {"tests": str(ROOT / "tests"), "address": cluster.address}
    done = subprocess.run([sys.executable, "-c", script], env=cluster.client_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finite"] and result["max_diff"] < 1e-9
    # The driver joined the head, which has no CPU: its read tasks, pinned there, ran with none.
    assert result["driver_node_cpus"] == 0
