"""Every job on Ray's fake autoscaling cluster: GPU nodes launched from zero, and CPU when none can be.

The cluster (tests/fake_cluster.py) is a head without GPUs plus a `gpu_node` type
(2 CPUs, 1 GPU) at 0 nodes with a short idle timeout, so each job finds no GPU,
asks for one through its model actors / workers, and the autoscaler launches a
node; the monitor log counts the launches.  The fake GPU has no CUDA: the jobs run
with the documented test-only CPU stand-in (CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU=1),
and without it they must stop with NoCudaError's message.  The jobs run as
`cycledrums` subprocesses that join the cluster through RAY_ADDRESS.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fake_cluster
from cluster.placement import STANDIN_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("cycledrums"))
GPU_NODE = {"gpu_node": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 1}}
SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "2"]


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    cluster = fake_cluster.start(tmp_path_factory.mktemp("fake-gpu"), head_cpus=2, worker_types=GPU_NODE,
                                 extra_env={"PYTHONPATH": str(ROOT)}, idle_timeout_minutes=0.1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def cpu_cluster(tmp_path_factory):
    """An autoscaling cluster whose only node type has no GPU."""
    cluster = fake_cluster.start(tmp_path_factory.mktemp("fake-cpu"), head_cpus=2,
                                 worker_types={"cpu_node": {"resources": {"CPU": 2}, "max_workers": 1}},
                                 extra_env={"PYTHONPATH": str(ROOT)})
    yield cluster
    cluster.stop()


def run_job(cluster, args: list[str], standin: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    env = cluster.client_env()
    env["PYTHONPATH"] = str(ROOT)
    env.pop(STANDIN_ENV, None)
    if standin:
        env[STANDIN_ENV] = "1"
    try:
        return subprocess.run([CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:  # say why: the autoscaler's view, not only the job's
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"{args[0]} ran past {timeout:g} s\n--- its stderr (tail):\n{stderr[-3000:]}"
                    f"\n--- the monitor log (tail):\n{cluster.monitor_log()[-5000:]}")


def launches(cluster) -> int:
    return len(re.findall(r"Launching 1 nodes?, type gpu_node", cluster.monitor_log()))


def wait_for_no_gpu_node(cluster, timeout: float = 120) -> None:
    """The idle GPU node of the previous job is gone, so the next job must launch its own."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = cluster.monitor_log()
        terminated = len(re.findall(r"[Tt]erminat\w* .*gpu_node|gpu_node.*[Tt]erminat|Removing \d+ nodes of type gpu_node",
                                    log))
        if launches(cluster) == 0 or terminated >= launches(cluster):
            return
        time.sleep(2)
    pytest.fail("the idle GPU node was not removed:\n" + cluster.monitor_log()[-3000:])


def assert_ran_on_a_launched_gpu_node(summary_resources: dict, before: int, cluster) -> None:
    assert summary_resources["device"] == "cuda"
    assert launches(cluster) == before + 1, cluster.monitor_log()[-3000:]
    placements = summary_resources["placements"]
    assert placements and all(p["gpu_ids"] == ["0"] and p["cuda_visible_devices"] == "0" for p in placements)
    assert all(p["node_id"] != fake_cluster.FAKE_HEAD_NODE_ID for p in placements)  # not the head
    assert summary_resources["gpu_ids"] == ["0"] and summary_resources["cpu_standin"] is True


# ---------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, synth_data):
    from infer.inception import save_random_weights
    from pipelines.separation import save_local_model, tiny_model
    from test_generate import write_tiny_checkpoint
    from train.synth_windows import write_synth_windows

    root = tmp_path_factory.mktemp("inputs")
    songs = root / "songs"
    songs.mkdir()
    tracks = sorted(p for p in (synth_data / "test").iterdir() if p.is_dir())[:2]
    shutil.copy(tracks[0] / "mixture.wav", songs / "song.wav")
    demucs = root / "demucs"
    save_local_model(tiny_model(seed=3), demucs, "tiny")
    bass = root / "bass"  # <clip>/bass.wav, with the true drums beside it (the score reference)
    for track in tracks:  # score needs at least 2 reference clips
        shutil.copytree(track, bass / track.name)
    from pipelines.mel import MelParams

    windows = str(root / "windows")
    write_synth_windows(windows, tracks=3, seconds=8.0, params=MelParams(n_mels=64, window_frames=64,
                                                                         overlap_frames=16))
    return {"songs": songs, "demucs": demucs, "bass": bass, "windows": windows,
            "checkpoint": write_tiny_checkpoint(root / "checkpoint_000000"),
            "inception": save_random_weights(str(root / "inception.pth"), seed=0)}


# ---------------------------------------------------------------- the jobs


@pytest.mark.timeout(900)
def test_prepare_mixes_launches_a_gpu_node_for_demucs(gpu_cluster, inputs, tmp_path):
    wait_for_no_gpu_node(gpu_cluster)
    before = launches(gpu_cluster)
    out = tmp_path / "windows"
    done = run_job(gpu_cluster, ["prepare", str(inputs["songs"]), str(out), "--layout", "mixes",
                                 "--demucs-model", str(inputs["demucs"]), "--device", "cuda", "--json",
                                 "--min-level-db", "-45"])  # a random Demucs separates quietly
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["tracks_ok"] == 1 and summary["device"] == "cuda"
    assert_ran_on_a_launched_gpu_node(summary["resources"], before, gpu_cluster)
    assert summary["resources"]["placements"][0]["what"] == "Demucs"


@pytest.mark.timeout(900)
def test_generate_then_score_each_launch_a_gpu_node(gpu_cluster, inputs, tmp_path):
    wait_for_no_gpu_node(gpu_cluster)
    before = launches(gpu_cluster)
    gen = tmp_path / "generated"
    done = run_job(gpu_cluster, ["generate", str(inputs["checkpoint"]), str(inputs["bass"]), str(gen),
                                 "--device", "cuda", "--griffin-lim-iters", "2"])
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((gen / "summary.json").read_text())
    assert summary["clips"] == 2 and summary["errors"] == 0
    assert_ran_on_a_launched_gpu_node(summary["resources"], before, gpu_cluster)

    wait_for_no_gpu_node(gpu_cluster)
    before = launches(gpu_cluster)
    scores = tmp_path / "scores"
    done = run_job(gpu_cluster, ["score", str(gen), str(inputs["bass"]), str(scores), "--device", "cuda",
                                 "--inception-weights", str(inputs["inception"]), "--json"])
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((scores / "summary.json").read_text())
    assert summary["clips_scored"] == 2
    assert_ran_on_a_launched_gpu_node(summary["resources"], before, gpu_cluster)


@pytest.mark.timeout(900)
def test_train_launches_a_gpu_node_for_its_worker(gpu_cluster, inputs, tmp_path):
    wait_for_no_gpu_node(gpu_cluster)
    before = launches(gpu_cluster)
    run = tmp_path / "run"
    done = run_job(gpu_cluster, ["train", inputs["windows"], str(run), "--device", "cuda", *SMALL,
                                 "--max-steps", "2", "--batch-size", "2", "--images-per-epoch", "0"])
    assert done.returncode == 0, done.stderr[-4000:]
    resources = json.loads((run / "logs" / "resources.json").read_text())
    assert_ran_on_a_launched_gpu_node(resources, before, gpu_cluster)


@pytest.mark.timeout(600)
def test_a_gpu_actor_without_cuda_stops_the_job_naming_the_node(gpu_cluster, inputs, tmp_path):
    done = run_job(gpu_cluster, ["generate", str(inputs["checkpoint"]), str(inputs["bass"]),
                                 str(tmp_path / "out"), "--device", "cuda"], standin=False)
    assert done.returncode == 2, done.stderr[-4000:]
    message = done.stderr.strip().splitlines()[-1]
    assert re.search(r"generator actor on node [0-9a-f]{56} was given GPU\(s\) \['0'\] by Ray "
                     r"\(CUDA_VISIBLE_DEVICES='0'\) but torch sees no CUDA device", message), done.stderr[-3000:]


@pytest.mark.timeout(600)
def test_auto_on_a_cluster_without_gpu_node_types_runs_on_cpu(cpu_cluster, inputs, tmp_path):
    gen = tmp_path / "generated"
    done = run_job(cpu_cluster, ["generate", str(inputs["checkpoint"]), str(inputs["bass"]), str(gen),
                                 "--griffin-lim-iters", "2"], standin=False)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((gen / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["resources"]["cpu_standin"] is False
    assert "no GPU in the cluster and no autoscaler node type with GPUs" in summary["resources"]["actors"]["reason"]
    assert all(p["gpu_ids"] == [] for p in summary["resources"]["placements"])
    # and the node types were read: an impossible --device cuda names them
    done = run_job(cpu_cluster, ["generate", str(inputs["checkpoint"]), str(inputs["bass"]),
                                 str(tmp_path / "cuda"), "--device", "cuda"], standin=False)
    assert done.returncode == 2
    assert "cpu_node: 2 CPU x up to 1 node(s)" in done.stderr
