"""A worker node lost mid-job, on a real two-node Ray cluster (tests/ray_nodes.py) over S3 (moto on
127.0.0.1): prepare and evaluate finish with every track / clip present exactly once and the same
outputs as a clean run, and they say on the console that a node was lost.

The worker node is killed (SIGKILL of its `ray start`, raylet, agents and workers, nothing else)
mid-job: prepare once it has written 2 of its 12 tracks, evaluate (which writes its results at
the end) at half the clean run's time; a second worker node then joins, as an autoscaler would
replace a lost one.
"""
from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import ray_nodes  # noqa: E402

from tests.test_generate import write_tiny_checkpoint  # noqa: E402

TRACKS = 12


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head and one worker node, 2 logical CPUs each (every stage of a job fits on either)."""
    cluster = ray_nodes.start(head_cpus=2, worker_cpus=[2])
    yield cluster
    cluster.stop()


@pytest.fixture
def s3fs_client(s3_endpoint):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from pipelines.synth import write_dataset

    root = tmp_path_factory.mktemp("nodes-synth")
    write_dataset(root, tracks=TRACKS, seconds=16.0, seed=5)
    return root


def _cycledrums(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from cycledrums_cli import main; sys.exit(main())",
                             *args], env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_worker_when(cluster, proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """Kill the worker node as soon as `ready()` holds while the job still runs; then a fresh
    worker node joins (for the next test)."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the job ended before the node could be killed: " + proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the job never got half-way"
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before the node could be killed"
    lost = next(n for n in reversed(cluster.nodes) if n.name != "head" and n.process.poll() is None)
    assert lost.kill(), "the worker node had no processes to kill"


def _rejoin(cluster) -> None:
    cluster.add_worker(2)
    cluster.wait_for_nodes(2)


def _objects(fs, prefix: str) -> dict[str, int]:
    fs.invalidate_cache()
    return {p[len(prefix):]: fs.info(p)["size"] for p in fs.find(prefix)}


@pytest.mark.timeout(1500)
def test_prepare_survives_a_lost_node_with_every_track_exactly_once(cluster, catalog, s3_bucket, s3fs_client):
    fs = s3fs_client
    fs.put(str(catalog), f"{s3_bucket}/in", recursive=True)
    _finish(_cycledrums(cluster, "prepare", f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/clean"))
    clean = _objects(fs, f"{s3_bucket}/clean")
    windows = sorted(k for k in clean if k.endswith(".parquet"))
    assert len(windows) == TRACKS

    job = _cycledrums(cluster, "prepare", f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/lost")

    def some_written() -> bool:
        fs.invalidate_cache()
        return len(fs.glob(f"{s3_bucket}/lost/*/*.parquet")) >= 2

    _kill_worker_when(cluster, job, some_written)
    out = _finish(job)
    _rejoin(cluster)

    lost = _objects(fs, f"{s3_bucket}/lost")
    assert sorted(lost) == sorted(clean), "the same objects, none missing, none extra (no temp or partial)"
    for key in windows:
        ours = pq.read_table(io.BytesIO(fs.cat(f"{s3_bucket}/lost{key}")))
        theirs = pq.read_table(io.BytesIO(fs.cat(f"{s3_bucket}/clean{key}")))
        assert ours.equals(theirs), key
    assert "node" in out and "lost" in out, out[-3000:]


@pytest.mark.timeout(1500)
def test_evaluate_survives_a_lost_node_with_every_clip_exactly_once(cluster, catalog, s3_bucket, s3fs_client,
                                                                   tmp_path):
    import pandas as pd

    from infer.inception import save_random_weights

    fs = s3fs_client
    fs.put(str(catalog / "test"), f"{s3_bucket}/test", recursive=True)
    model = write_tiny_checkpoint(tmp_path / "cyclegan")
    fs.put(str(model), f"{s3_bucket}/cyclegan", recursive=True)
    weights = save_random_weights(str(tmp_path / "inception.pth"), seed=0)
    args = [f"s3://{s3_bucket}/cyclegan", f"s3://{s3_bucket}/test"]
    opts = ["--inception-weights", str(weights), "--griffin-lim-iters", "4", "--report-clips", "1"]
    started = time.monotonic()
    _finish(_cycledrums(cluster, "evaluate", *args, f"s3://{s3_bucket}/clean", *opts))
    clean_s = time.monotonic() - started

    # evaluate writes its results at the end, so "half-way" is half the clean run's time: past
    # the start (Ray connection, pre-flight), with the model actors at work.
    started = time.monotonic()
    job = _cycledrums(cluster, "evaluate", *args, f"s3://{s3_bucket}/lost", *opts)
    _kill_worker_when(cluster, job, lambda: time.monotonic() - started >= 0.5 * clean_s)
    out = _finish(job)
    _rejoin(cluster)

    def clips(prefix):
        table = pd.read_parquet(io.BytesIO(fs.cat(f"{s3_bucket}/{prefix}/clips.parquet")))
        return table.sort_values(["set", "clip_id"]).reset_index(drop=True)

    ours, theirs = clips("lost"), clips("clean")
    assert not ours.duplicated(["set", "clip_id"]).any()
    assert list(ours["set"]) == list(theirs["set"]) and list(ours["clip_id"]) == list(theirs["clip_id"])
    figures = [c for c in theirs.columns if c.startswith(("stoi_", "level_", "spectrum_", "rhythm_", "density_"))]
    np.testing.assert_allclose(ours[figures].to_numpy(float), theirs[figures].to_numpy(float), rtol=1e-4, atol=1e-4)
    assert sorted(_objects(fs, f"{s3_bucket}/lost")) == sorted(_objects(fs, f"{s3_bucket}/clean"))
    assert "node" in out and "lost" in out, out[-3000:]


def test_the_multi_node_cluster_listens_on_loopback_only(cluster):
    """Every socket the head's and the worker nodes' processes listen on is on 127.0.0.1."""
    import psutil

    loopback = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
    listening = set()
    for node in cluster.nodes:
        for pid in node.pids():
            try:
                listening |= {(node.name, c.laddr.ip) for c in psutil.Process(pid).net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
    assert {name for name, _ in listening} >= {"head"} and len({n for n, _ in listening}) >= 2, listening
    assert all(ip in loopback for _, ip in listening), listening
