"""The shared resource policy (cluster/resources.py) and the local Ray every job starts."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cluster.cluster_view import ClusterView, NODE_CORES, NodeType
from cluster.placement import NoCudaError, STANDIN_ENV, broken_gpu_node_as, claim_device
from cluster.resources import ResourceError, ResourceRequest, check_satisfiable, plan_actors, plan_workers

ROOT = Path(__file__).resolve().parents[1]
LOCAL_4_CPUS = ClusterView([{"CPU": 4.0}])
GPU_FROM_ZERO = ClusterView([{"CPU": 0.0}], [NodeType("gpu_node", {"CPU": 8.0, "GPU": 1.0}, 3),
                                             NodeType("cpu_node", {"CPU": 16.0}, 2)], "test")


def test_auto_uses_gpus_the_autoscaler_can_add_even_when_there_are_none_now():
    plan = plan_actors(ResourceRequest(), GPU_FROM_ZERO)
    assert (plan.device, plan.min_size, plan.max_size, plan.num_gpus, plan.num_cpus) == ("cuda", 1, 3, 1.0, 1.0)
    assert "gpu_node" in plan.reason
    assert plan.remote_args()["num_gpus"] == 1.0  # the actors ask: the autoscaler launches GPU nodes
    # fractions pack actors: 3 GPUs / 0.25 = 12 actors at most
    assert plan_actors(ResourceRequest(gpus_per_actor=0.25), GPU_FROM_ZERO).max_size == 12


def test_auto_on_a_cpu_cluster_runs_cpu_actors_that_thread_over_their_cpus():
    plan = plan_actors(ResourceRequest(), LOCAL_4_CPUS)
    assert (plan.device, plan.size, plan.num_cpus) == ("cpu", 1, 1.0)  # 4 CPUs * 0.5 - 1
    assert "no GPU" in plan.reason
    demucs = plan_actors(ResourceRequest(), ClusterView([{"CPU": 8.0}]), cpu_share=1.0, default_cpu_actors=1)
    assert (demucs.size, demucs.num_cpus, demucs.torch_threads) == (1, 7.0, 7)
    pool = plan_actors(ResourceRequest(actors=(1, 3)), ClusterView([{"CPU": 16.0}]))
    assert (pool.min_size, pool.max_size, pool.num_cpus) == (1, 3, 2.0)
    # a head with 0 CPUs whose autoscaler adds CPU nodes: planned from the node type
    head0 = ClusterView([{"CPU": 0.0}], [NodeType("cpu_node", {"CPU": 16.0}, 2)], "test")
    assert plan_actors(ResourceRequest(), head0, cpu_share=1.0, default_cpu_actors=1).num_cpus == 15.0


def test_actors_that_do_all_the_heavy_work_take_one_core_each_and_leave_the_io_share_to_tasks():
    two = plan_actors(ResourceRequest(), ClusterView([{"CPU": 2.0}]), io_cpus=0.5)
    assert (two.size, two.num_cpus, two.torch_threads, two.io_task_cpus, two.io.max_tasks) == (2, 0.75, 1, 0.25, 2)
    # every stage can run at once on 2 cores: 2 actors + one decode task + one write task
    assert two.size * two.num_cpus + 2 * two.io_task_cpus <= 2.0
    # the local Ray on a 2-core machine: 4 logical CPUs (tokens) but 2 cores, so 2 actors
    local = plan_actors(ResourceRequest(), ClusterView([{"CPU": 4.0, NODE_CORES: 2.0}]), io_cpus=0.5)
    assert (local.size, local.num_cpus) == (2, 0.75)
    sixteen = plan_actors(ResourceRequest(), ClusterView([{"CPU": 16.0}]), io_cpus=0.5)
    assert (sixteen.size, sixteen.torch_threads) == (16, 1) and sixteen.size * sixteen.num_cpus <= 15.5
    chosen = plan_actors(ResourceRequest(actors=(1, 3)), ClusterView([{"CPU": 16.0}]), io_cpus=0.5)
    assert (chosen.min_size, chosen.max_size, chosen.num_cpus, chosen.torch_threads) == (1, 3, 5.166, 5)
    # on GPUs the policy is the GPU one: one actor per GPU, tasks 1 CPU each
    gpu = plan_actors(ResourceRequest(), GPU_FROM_ZERO, io_cpus=0.5)
    assert (gpu.device, gpu.num_gpus, gpu.io_task_cpus) == ("cuda", 1.0, 1.0)


def test_requests_the_cluster_can_never_satisfy_fail_with_what_it_has():
    with pytest.raises(ResourceError, match="no GPU now and no node type that can add one; the cluster has 4 CPUs"):
        plan_actors(ResourceRequest(device="cuda"), LOCAL_4_CPUS)
    with pytest.raises(ResourceError, match=r"8 training worker\(s\) x 1 CPU needs 8 CPU; the cluster has 4 CPUs"):
        check_satisfiable({"CPU": 1.0}, 8, LOCAL_4_CPUS, what="training worker")
    with pytest.raises(ResourceError, match=r"gpu_node: 8 CPU, 1 GPU x up to 3 node\(s\)"):
        check_satisfiable({"CPU": 1.0, "GPU": 1.0}, 4, GPU_FROM_ZERO, what="training worker")
    with pytest.raises(ResourceError, match="no node can hold one"):
        check_satisfiable({"CPU": 1.0, "GPU": 2.0}, 1, GPU_FROM_ZERO, what="model actor")
    with pytest.raises(ResourceError, match="--gpus-per-actor"):
        ResourceRequest(gpus_per_actor=1.5)
    check_satisfiable({"CPU": 1.0, "GPU": 1.0}, 3, GPU_FROM_ZERO, what="training worker")  # fits


def test_cli_options_are_the_same_on_every_job():
    import argparse

    from cycledrums_cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for job in ("prepare", "generate", "score", "train"):
        options = {s for a in sub.choices[job]._actions for s in a.option_strings}
        assert "--device" in options, job
        if job != "train":  # train sizes its worker group with --num-workers
            assert {"--actors", "--gpus-per-actor"} <= options, job
    args = build_parser().parse_args(["generate", "ck", "in", "out", "--actors", "2:5", "--gpus-per-actor", "0.5",
                                      "--device", "cuda"])
    assert ResourceRequest.from_args(args) == ResourceRequest("cuda", (2, 5), 0.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "g", "r", "o", "--actors", "3:1"])


def test_a_gpu_actor_without_cuda_stops_unless_the_test_standin_is_allowed(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv(STANDIN_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(NoCudaError, match=r"generator actor on node .*\(CUDA_VISIBLE_DEVICES='0'\).*sees no CUDA"):
        claim_device("cuda", "generator")
    monkeypatch.setenv(STANDIN_ENV, "1")
    assert claim_device("cuda", "generator") == "cpu"


def test_a_broken_gpu_node_stops_the_job_with_one_line_and_other_errors_pass_unchanged():
    class JobError(RuntimeError):
        pass

    # What Ray raises on the driver when an actor's constructor raised NoCudaError.
    actor_died = RuntimeError("ActorDiedError: The actor died because of an error raised in its creation task\n"
                              "  File \"cluster/resources.py\", line 550, in claim_device\n"
                              "cluster.resources.NoCudaError: generator actor on node abc was given GPU(s) ['0'] "
                              "by Ray but torch sees no CUDA device\nmore traceback")
    with pytest.raises(JobError) as caught:
        with broken_gpu_node_as(JobError):
            raise actor_died
    assert str(caught.value) == ("generator actor on node abc was given GPU(s) ['0'] by Ray "
                                 "but torch sees no CUDA device")
    assert caught.value.__cause__ is actor_died
    with pytest.raises(ValueError, match="a bad clip"):
        with broken_gpu_node_as(JobError):
            raise ValueError("a bad clip")


def _run_cli(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([str(Path(sys.executable).with_name("cycledrums")), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(60)
def test_train_with_more_workers_than_the_local_ray_has_fails_at_once(tmp_path, synth_data):
    """#11 item 2: it used to wait forever for workers that can never start."""
    start = time.perf_counter()
    done = _run_cli(["train", str(synth_data), str(tmp_path / "run"), "--num-workers", "8"], timeout=55)
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr[-2000:]
    assert "8 training worker(s) x 1 CPU needs 8 CPU; the cluster has 4 CPUs" in done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 30, seconds


@pytest.mark.timeout(120)
def test_the_local_ray_a_job_starts_listens_on_loopback_only():
    """#11 item 10: every socket the started Ray processes listen on is on 127.0.0.1."""
    # (and the local object store is sized from the machine)
    script = textwrap.dedent("""
        import json, psutil, ray
        from cluster.ray_runtime import init_ray
        init_ray()
        ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # start workers too
        me = psutil.Process()
        found = []
        for p in [me] + me.children(recursive=True):
            try:
                found += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                pass
        print(json.dumps({"sockets": found, "object_store": ray.cluster_resources()["object_store_memory"]}))
        ray.shutdown()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    sockets = report["sockets"]
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw Ray's servers
    exposed = [s for s in sockets if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, exposed
    # The object store follows the machine (Ray's default share of its memory), not a fixed 4 GiB cap.
    import psutil

    if psutil.virtual_memory().total > 20 * 2**30:
        assert report["object_store"] > 4 * 2**30, report["object_store"]


LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.mark.timeout(600)
def test_train_on_the_local_ray_listens_on_loopback_only(tmp_path):
    """#31 item 9: during `train` (torch's rendezvous store on rank 0, gloo's sockets) no process
    the job started listens on anything but 127.0.0.1."""
    from pipelines.mel import MelParams
    from train.synth_windows import write_synth_windows

    data = tmp_path / "data"
    write_synth_windows(str(data), tracks=3, seconds=8.0, params=MelParams(n_mels=64, window_frames=64,
                                                                           overlap_frames=16))
    script = textwrap.dedent("""
        import json, sys, threading, time, psutil
        from cycledrums_cli import main
        found, done = set(), threading.Event()
        def scan():
            me = psutil.Process()
            while not done.is_set():
                for p in [me] + me.children(recursive=True):
                    try:
                        found.update((p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                                     if c.status == psutil.CONN_LISTEN)
                    except psutil.Error:
                        pass
                time.sleep(0.2)
        threading.Thread(target=scan, daemon=True).start()
        code = main(["train", sys.argv[1], sys.argv[2], "--ngf", "8", "--ndf", "8",
                     "--n-blocks", "1", "--batch-size", "1", "--max-steps", "2"])
        done.set()
        print(json.dumps({"code": code, "sockets": sorted(found)}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script, str(data), str(tmp_path / "run")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    sockets = report["sockets"]
    assert any("RayTrainWorker" in name for name, _, _ in sockets), sockets  # the scan saw the workers
    exposed = [s for s in sockets if s[1] not in LOOPBACK]
    assert not exposed, exposed


def test_plan_workers_reads_the_live_cluster(ray_local):
    assert plan_workers("auto", 2, 1.0)[0] == "cpu"
    with pytest.raises(ResourceError, match="the cluster has 4 CPUs and 0 GPUs on 1 node"):
        plan_workers("auto", 5, 1.0)
