"""A rehearsal of the whole chain on a real multi-node Ray cluster over S3, all on 127.0.0.1.

Starts an S3 endpoint (moto's server, behind a counter of requests and bytes) and a Ray cluster
of one head and --workers worker nodes, each its own `ray start` (own raylet and object store;
tests/ray_nodes.py), then runs the chain as a user would, every path an s3:// URI:

    synth -> prepare -> train (Ray Train, one worker per worker node, checkpoints on S3)
          -> evaluate (every test clip, baselines on, the report)

at each --scales size (1x: --tracks songs of --seconds s; the test split is a third of them), and
prints one table per stage: items, wall time, items/s per logical core, growth (the largest
scale's throughput over 1x's), the same two once the job runs (steady: from its first progress
line to its last, so without the start and the summary, which small scales cannot amortise),
the driver's and each node's peak RSS, object-store spill and S3 requests and bytes per item.

--kill-node prepare,evaluate,train kills one worker node (SIGKILL of its `ray start`, raylet and
workers, nothing else) half-way through those stages (prepare and evaluate at half the clean run's
time; train when it logs the step after half its steps, past a checkpoint) at the first scale,
after a clean run of the same stage, and checks: prepare and evaluate complete with the clean
run's outputs (every track / clip exactly once); train ends at the requested step, restarted from
its newest checkpoint.
A fresh worker node joins 10 s after the kill, as an autoscaler would replace the lost one.

    .venv/bin/python benchmarks/rehearsal.py                       # 1x and 4x, no node loss
    .venv/bin/python benchmarks/rehearsal.py --scales 1 --kill-node prepare,evaluate,train
    .venv/bin/python benchmarks/rehearsal.py --stages prepare --tracks 1000 --seconds 8   # prepare alone, larger
    make rehearsal

Every process started here is ended by its process id; nothing listens beyond 127.0.0.1.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import ray_nodes  # noqa: E402  (tests/ray_nodes.py: the multi-node cluster on 127.0.0.1)

BUCKET = "rehearsal"
MB = 1024 * 1024


# ---------------------------------------------------------------- S3 with counters


class CountingS3:
    """moto's S3 server on 127.0.0.1 behind a WSGI wrapper that counts requests and bytes."""

    def __init__(self):
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        self.requests = self.bytes_in = self.bytes_out = 0
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = make_server("127.0.0.1", port, self._counting(app), threaded=True,
                                  request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _counting(self, app):
        def wrapped(environ, start_response):
            sent = int(environ.get("CONTENT_LENGTH") or 0)
            body = app(environ, start_response)
            out = 0
            for chunk in body:
                out += len(chunk)
                yield chunk
            with self._lock:
                self.requests += 1
                self.bytes_in += sent
                self.bytes_out += out
        return wrapped

    def counters(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.bytes_in + self.bytes_out

    def stop(self) -> None:
        self.server.shutdown()


# ---------------------------------------------------------------- one stage, measured


@dataclass
class StageRun:
    stage: str
    scale: int
    items: int
    wall_s: float
    cores: float
    driver_peak_mb: float
    node_peak_mb: dict
    spill_mb: float
    s3_requests: int
    s3_bytes: int
    output: str = ""
    node_lost: dict = field(default_factory=dict)
    steady_items_s: float | None = None  # items/s between the job's first and last progress lines

    @property
    def per_core(self) -> float:
        return self.items / self.wall_s / max(self.cores, 1e-9)

    @property
    def steady_per_core(self) -> float | None:
        return None if self.steady_items_s is None else self.steady_items_s / max(self.cores, 1e-9)


# The jobs' progress lines (cluster.console.Progress) and train's step lines.
PROGRESS = re.compile(r": (\d+)/(\d+)(?: \w+)? done|\bstep (\d+)/(\d+) ")


def steady_rate(timed_lines: list[tuple[float, str]], items: int) -> float | None:
    """Items/s from the job's first progress line to its last (cluster.console.Progress, one every 10 s):
    the throughput once the job runs, without its start (Ray connect, actors loading models) and its
    end (summary, report), which a short run cannot amortise.  Progress counts are scaled to the
    stage's items (evaluate counts reference clips; its items are clips x sets)."""
    marks = [(t, int(m.group(1) or m.group(3)), int(m.group(2) or m.group(4)))
             for t, line in timed_lines for m in [PROGRESS.search(line)] if m]
    if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
        return None
    (t0, d0, total), (t1, d1, _) = marks[0], marks[-1]
    return (d1 - d0) * items / total / (t1 - t0)


class Sampler:
    """Peak RSS of one driver process and of each node's process tree, every 0.5 s."""

    def __init__(self, driver_pid: int, cluster):
        self.driver_pid, self.cluster = driver_pid, cluster
        self.driver_mb = 0.0
        self.nodes_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss(pids) -> float:
        import psutil

        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return total / MB

    def _run(self):
        while not self._stop.wait(0.5):
            self.driver_mb = max(self.driver_mb, self._rss([self.driver_pid]))
            for node in self.cluster.nodes:
                if not node.killed:
                    self.nodes_mb[node.name] = max(self.nodes_mb.get(node.name, 0.0), self._rss(node.pids()))

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


def spilled_mb(cluster) -> float:
    """Bytes the cluster's object stores spilled so far (Ray's memory summary)."""
    probe = ("import ray; from ray._private.internal_api import memory_summary; "
             "ray.init(address=%r, log_to_driver=False); print(memory_summary(stats_only=True))" % cluster.address)
    done = subprocess.run([sys.executable, "-c", probe], env=cluster.env, capture_output=True, text=True, timeout=120)
    found = re.search(r"Spilled (\d+) MiB", done.stdout)
    return float(found.group(1)) if found else 0.0


def run_stage(cluster, s3: CountingS3, stage: str, scale: int, items: int, args: list[str],
              kill_at_s: float | None = None, log_dir: Path | None = None, kill_on: str | None = None) -> StageRun:
    """Run `cycledrums ARGS` as a driver joining the cluster; with `kill_at_s`, kill a worker
    node that many seconds after the start (if the job still runs), or with `kill_on` when the
    job's console first prints a line containing it; the node is replaced 10 s later."""
    requests0, bytes0 = s3.counters()
    spill0 = spilled_mb(cluster)
    cores = sum(float(n.cpus) for n in cluster.nodes if not n.killed)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cycledrums_cli", *args], env=cluster.client_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    sampler = Sampler(proc.pid, cluster)
    lines, timed, lost = [], [], {}
    if kill_at_s is not None:
        timer = threading.Timer(kill_at_s, lambda: proc.poll() is None and lost.update(kill_and_replace(cluster)))
        timer.start()
    killing = kill_at_s is not None or kill_on is not None
    log_path = (log_dir or Path(tempfile.gettempdir())) / f"{stage}-{scale}x{'-lost' if killing else ''}.log"
    with open(log_path, "w") as log:  # written as the job goes, to follow a long stage
        for line in proc.stdout:
            if kill_on is not None and kill_on in line and not lost:
                lost.update(kill_and_replace(cluster))
            lines.append(line)
            timed.append((time.perf_counter() - start, line))
            log.write(line)
            log.flush()
    proc.wait()
    if kill_at_s is not None:
        timer.cancel()
    wall = time.perf_counter() - start
    sampler.stop()
    output = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"rehearsal: {stage} at {scale}x failed (exit {proc.returncode}):\n{output[-4000:]}")
    requests1, bytes1 = s3.counters()
    if lost:  # from the kill to the job's end: the recovery and the rest of the work
        lost["kill_to_end_s"] = round(time.perf_counter() - lost.pop("at_s"), 1)
    elif killing:
        lost["note"] = "the job ended before the node was killed"
    return StageRun(stage, scale, items, wall, cores, sampler.driver_mb, dict(sampler.nodes_mb),
                    spilled_mb(cluster) - spill0, requests1 - requests0, bytes1 - bytes0, output, lost,
                    steady_rate(timed, items))


def kill_and_replace(cluster) -> dict:
    victim = next(n for n in reversed(cluster.nodes) if n.name != "head" and not n.killed)
    at = time.perf_counter()
    pids = victim.kill()
    print(f"  killed {victim.name} ({len(pids)} processes); a new node joins in 10 s", flush=True)

    def replace():
        time.sleep(10)
        cluster.add_worker(victim.cpus)

    threading.Thread(target=replace, daemon=True).start()
    return {"node": victim.name, "processes": len(pids), "at_s": at}


# ---------------------------------------------------------------- the chain


def s3fs_for(s3: CountingS3):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint})


def upload_catalog(s3: CountingS3, tracks: int, seconds: float, prefix: str) -> tuple[int, int]:
    from pipelines.synth import write_dataset

    with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp:
        plans = write_dataset(tmp, tracks=tracks, seconds=seconds, seed=0)
        s3fs_for(s3).put(tmp, f"{BUCKET}/{prefix}", recursive=True)
    test = sum(1 for p in plans if p.split == "test")
    return tracks, test


def chain(cluster, s3, scale: int, opts, log_dir: Path, kill: set[str]) -> list[StageRun]:
    base = f"s3://{BUCKET}/x{scale}"
    tracks, test_clips = upload_catalog(s3, opts.tracks * scale, opts.seconds, f"x{scale}/songs")
    runs = []

    def stage(name, items, args):
        if name in kill:  # the clean run first, then the same stage losing a node half-way
            clean = run_stage(cluster, s3, name, scale, items, args(f"{base}/{name}-clean"), log_dir=log_dir)
            runs.append(clean)
            # train: half-way in steps, past a checkpoint (its start is most of a short run's time)
            half = {"kill_on": f"step {items // 2 + 1}/{items} "} if name == "train" else {"kill_at_s": clean.wall_s / 2}
            lossy = run_stage(cluster, s3, name, scale, items, args(f"{base}/{name}-lost"), log_dir=log_dir, **half)
            lossy.stage = f"{name} (node lost)"
            compare(name, s3, f"{base}/{name}-clean", f"{base}/{name}-lost", lossy)
            runs.append(lossy)
            return f"{base}/{name}-clean"
        runs.append(run_stage(cluster, s3, name, scale, items, args(f"{base}/{name}"), log_dir=log_dir))
        return f"{base}/{name}"

    windows = stage("prepare", tracks, lambda out: ["prepare", f"{base}/songs", out])
    if "train" not in opts.stages:
        return runs
    steps = opts.train_steps
    model = stage("train", steps, lambda out: [
        "train", windows, out, "--num-workers", str(opts.workers), "--cpus-per-worker",
        str(opts.worker_cpus - 1), "--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--max-steps", str(steps),
        "--checkpoint-every", str(max(steps // 4, 1)), "--log-every", "1"])
    if "evaluate" not in opts.stages:
        return runs
    n_sets = 1 + 5  # the model + the baselines (true drums, other clip, bass copy, noise, silence)
    stage("evaluate", test_clips * n_sets, lambda out: [
        "evaluate", model, f"{base}/songs/test", out, "--griffin-lim-iters", "8", "--report-clips", "2",
        "--inception-weights", opts.inception_weights])
    return runs


def compare(stage: str, s3, clean: str, lost: str, run: StageRun) -> None:
    """prepare / evaluate: the same objects and outputs as the clean run; train: the last step."""
    import pandas as pd
    import pyarrow.parquet as pq

    fs = s3fs_for(s3)
    fs.invalidate_cache()
    strip = lambda uri: uri[len("s3://"):]  # noqa: E731
    keys = lambda root: sorted(p[len(strip(root)):] for p in fs.find(strip(root)))  # noqa: E731
    if stage == "prepare":
        a, b = keys(clean), keys(lost)
        same = a == b and all(
            pq.read_table(io.BytesIO(fs.cat(strip(clean) + k))).equals(pq.read_table(io.BytesIO(fs.cat(strip(lost) + k))))
            for k in a if k.endswith(".parquet"))
        run.node_lost["outputs_equal_clean_run"] = same
    elif stage == "evaluate":
        cols = lambda root: pd.read_parquet(io.BytesIO(fs.cat(strip(root) + "/clips.parquet")))  # noqa: E731
        x, y = cols(clean), cols(lost)
        key = ["set", "clip_id"]
        x, y = x.sort_values(key).reset_index(drop=True), y.sort_values(key).reset_index(drop=True)
        figures = [c for c in x.columns if c.startswith(("stoi_", "level_", "spectrum_", "rhythm_", "density_"))]
        run.node_lost["clips_exactly_once"] = not y.duplicated(key).any() and list(x[key].itertuples()) == list(y[key].itertuples())
        run.node_lost["max_figure_difference"] = float((x[figures] - y[figures]).abs().max().max())
    else:
        records = [json.loads(line) for line in fs.cat(strip(lost) + "/logs/metrics.jsonl").decode().splitlines()
                   if line.strip()]
        steps = [r["step"] for r in records if "event" not in r and "step" in r]  # not start/checkpoint/end
        run.node_lost["last_step"] = max(steps)
        run.node_lost["steps_logged_twice"] = len(steps) - len(set(steps))
        run.node_lost["restarted_from_step"] = [r["step"] for r in records if r.get("event") == "start"][1:]
    restarts = len(re.findall(r"lost mid-job|restart", run.output))
    run.node_lost["console_lines_about_it"] = restarts


# ---------------------------------------------------------------- tables


def print_tables(runs: list[StageRun]) -> None:
    for name in dict.fromkeys(r.stage for r in runs):
        rows = [r for r in runs if r.stage == name]
        base = rows[0]
        print(f"\n{name}")
        print("| scale | items | wall s | items/s per core | growth | steady items/s per core | steady growth "
              "| driver peak MB | node peak MB | spill MB | S3 requests/item | S3 KB/item |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            growth = r.per_core / base.per_core if base.per_core else float("nan")
            steady, steady_growth = "-", "-"
            if r.steady_per_core is not None:
                steady = f"{r.steady_per_core:.3f}"
                if base.steady_per_core:
                    steady_growth = f"{r.steady_per_core / base.steady_per_core:.2f}"
            nodes = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.node_peak_mb.items()))
            print(f"| {r.scale}x | {r.items} | {r.wall_s:.1f} | {r.per_core:.3f} | {growth:.2f} | {steady} | "
                  f"{steady_growth} | {r.driver_peak_mb:.0f} | {nodes} | {r.spill_mb:.0f} | "
                  f"{r.s3_requests / r.items:.1f} | {r.s3_bytes / r.items / 1024:.0f} |")
        for r in rows:
            if r.node_lost:
                print(f"  node lost at {r.scale}x: {json.dumps(r.node_lost)}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,4", help="sizes to run, as multiples of 1x (default: 1,4)")
    p.add_argument("--tracks", type=int, default=24, help="songs at 1x; a third are test clips (default: 24)")
    p.add_argument("--seconds", type=float, default=30.0, help="song length in s (default: 30)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes (default: 2)")
    p.add_argument("--worker-cpus", type=int, default=3,
                   help="logical CPUs per worker node; a Train worker takes all but one (default: 3)")
    p.add_argument("--head-cpus", type=int, default=1, help="logical CPUs of the head (default: 1)")
    p.add_argument("--train-steps", type=int, default=40, help="training steps (default: 40)")
    p.add_argument("--kill-node", default="", help="stages that lose a worker node half-way, at the first "
                   "scale: any of prepare,evaluate,train (default: none)")
    p.add_argument("--stages", default="prepare,train,evaluate",
                   help="the chain up to: prepare; prepare,train; or all three (default: all three)")
    p.add_argument("--logs", default=None, help="folder for each stage's console output (default: a temp folder)")
    return p.parse_args()


def main() -> None:
    opts = parse_args()
    kill = {s for s in opts.kill_node.split(",") if s}
    if kill - {"prepare", "evaluate", "train"}:
        raise SystemExit(f"rehearsal: --kill-node takes prepare, evaluate, train; got {sorted(kill)}")
    opts.stages = [s for s in opts.stages.split(",") if s]
    if opts.stages not in (["prepare"], ["prepare", "train"], ["prepare", "train", "evaluate"]):
        raise SystemExit(f"rehearsal: --stages is prepare, prepare,train or prepare,train,evaluate; "
                         f"got {','.join(opts.stages)}")
    kill &= set(opts.stages)
    scales = [int(s) for s in opts.scales.split(",")]
    log_dir = Path(opts.logs or tempfile.mkdtemp(prefix="rehearsal-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    # moto keeps an object under this many bytes in memory and a larger one in a temp file: with 1,
    # every object is on disk (300 objects of 1.4 MB: 49 MB of the server's memory instead of 437).
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", "1")
    s3 = CountingS3()
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3.endpoint,
                       "AWS_EC2_METADATA_DISABLED": "true"})
    import boto3

    from infer.inception import save_random_weights

    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=BUCKET)
    opts.inception_weights = str(save_random_weights(str(log_dir / "inception.pth"), seed=0))
    cluster = ray_nodes.start(head_cpus=opts.head_cpus, worker_cpus=[opts.worker_cpus] * opts.workers)
    print(f"cluster: head ({opts.head_cpus} CPUs) + {opts.workers} worker nodes ({opts.worker_cpus} CPUs each) "
          f"at {cluster.address}; S3 at {s3.endpoint}; logs in {log_dir}", flush=True)
    runs = []
    try:
        for i, scale in enumerate(scales):
            print(f"== {scale}x: {opts.tracks * scale} songs of {opts.seconds:g} s", flush=True)
            runs += chain(cluster, s3, scale, opts, log_dir, kill if i == 0 else set())
            # A scale's objects go once its stages are measured: the next scale's disk and memory.
            s3fs_for(s3).rm(f"{BUCKET}/x{scale}", recursive=True)
    finally:
        cluster.stop()
        s3.stop()
    print_tables(runs)


if __name__ == "__main__":
    main()
