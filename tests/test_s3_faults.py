"""S3 through a fault-injecting proxy (tests/s3_fault_proxy.py) in front of the moto server.

At 20% faults (503 SlowDown replies and connection resets) prepare and generate finish
every track and clip under the default retry policy.  At 70%, with the retry count cut to 3
(AWS_MAX_ATTEMPTS, the AWS SDKs' setting) so that retries run out in a test-sized job, they
report what failed (naming the object, saying a re-run retries), exit non-zero without a
traceback and write nothing corrupt; a re-run without faults then completes exactly.
The `*_with_midbody_resets` tests do the same for prepare, generate and evaluate with the
common real failure, a reset in the middle of a response body, beside 503s (see below).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from s3_fault_proxy import FaultProxy

CLIP_NAMES = ("Café 01", "Cafè 01", "plain")


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    with FaultProxy(s3_endpoint) as p:
        yield p


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tmp_path_factory):
    """s3://faults/stems (3 synth tracks of 8 s) and s3://faults/bass (3 bass clips of 4 s)."""
    import boto3
    import fsspec

    from pipelines.synth import write_dataset

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="faults")
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    local = tmp_path_factory.mktemp("stems")
    write_dataset(local, tracks=3, seconds=8.0, seed=5)
    for path in local.rglob("*.wav"):
        if path.stem in ("bass", "drums"):
            fs.pipe_file(f"faults/stems/{path.relative_to(local).as_posix()}", path.read_bytes())
    t = np.arange(4 * 22050) / 22050
    for i, name in enumerate(CLIP_NAMES):
        buf = io.BytesIO()
        sf.write(buf, (0.4 * np.sin(2 * np.pi * (55 + 10 * i) * t)).astype(np.float32), 22050, format="WAV")
        fs.pipe_file(f"faults/bass/{name}.wav", buf.getvalue())
    return "s3://faults"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from pipelines.mel import MelParams
    from train.checkpoint import write_checkpoint
    from train.config import TrainConfig
    from train.models import build_networks

    torch.manual_seed(0)
    config = TrainConfig(model="cyclegan", ngf=8, ndf=8, n_blocks=2).to_dict()
    config["mel_params"] = MelParams().to_dict()
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_000000000"
    write_checkpoint(str(folder), {k: v.state_dict() for k, v in build_networks(config).items()},
                     {"step": 0}, config, step=0, epoch=0)
    return str(folder)


def _run_driver(args: list[str], address: str, attempts: int) -> subprocess.CompletedProcess:
    """The CLI in its own process on the test's Ray, with AWS_MAX_ATTEMPTS for it and its workers."""
    env = dict(os.environ, AWS_MAX_ATTEMPTS=str(attempts), RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(
        {"runtime_env": {"env_vars": {"AWS_MAX_ATTEMPTS": str(attempts)}}}))
    return subprocess.run(
        [sys.executable, "-c", "import sys; from cycledrums_cli import main; sys.exit(main())",
         *args, "--address", address], env=env, capture_output=True, text=True, timeout=500)


def _tables(fs, prefix: str) -> dict:
    return {p.rsplit("/", 1)[1]: pq.read_table(fs.open(p, "rb"))
            for p in fs.find(prefix) if p.endswith(".parquet")}


def _s3fs(endpoint):
    import fsspec

    return fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def _own_traceback(stderr: str) -> bool:
    # Lines forwarded from Ray workers carry a "(name pid=...)" prefix; the CLI's own do not.
    return any(line.startswith("Traceback") for line in stderr.splitlines())


@pytest.mark.timeout(600)
def test_prepare_and_generate_complete_at_20_percent_faults(ray_local, proxy, bucket, checkpoint,
                                                            s3_endpoint):
    from cycledrums_cli import main

    proxy.rate, proxy.seed = 0.2, 1
    before = sum(proxy.counts[k] for k in ("slowdown", "reset"))
    assert main(["prepare", f"{bucket}/stems", f"{bucket}/w20", "--s3-endpoint-url", proxy.url]) == 0
    fs = _s3fs(s3_endpoint)
    summary = json.loads(fs.cat_file("faults/w20/_summary.json"))
    assert (summary["tracks_ok"], summary["tracks_failed"]) == (3, 0)
    assert sum(v["tracks"] for v in summary["dataset"].values()) == 3

    assert main(["generate", checkpoint, f"{bucket}/bass", f"{bucket}/g20", "--s3-endpoint-url",
                 proxy.url, "--griffin-lim-iters", "4"]) == 0
    manifest = pq.read_table(fs.open("faults/g20/manifest.parquet", "rb"))
    assert sorted(manifest.column("clip_id").to_pylist()) == sorted(CLIP_NAMES)
    for name in CLIP_NAMES:  # "Café 01" and "Cafè 01" are two clips, nothing overwritten
        assert fs.exists(f"faults/g20/{name}/drums.wav")
    injected = sum(proxy.counts[k] for k in ("slowdown", "reset")) - before
    assert injected >= 10, proxy.counts  # the faults really happened
    proxy.rate = 0.0


@pytest.mark.timeout(900)
def test_at_70_percent_failures_are_reported_and_a_rerun_completes(ray_local, proxy, bucket, checkpoint,
                                                                   s3_endpoint):
    from cycledrums_cli import main

    address = ray_local.get_runtime_context().gcs_address
    fs = _s3fs(s3_endpoint)

    proxy.rate, proxy.seed = 0.7, 4
    result = _run_driver(["prepare", f"{bucket}/stems", f"{bucket}/w70", "--s3-endpoint-url", proxy.url],
                         address, attempts=3)
    proxy.rate = 0.0
    assert result.returncode == 1, result.stderr[-3000:]
    assert not _own_traceback(result.stderr), result.stderr[-3000:]
    assert "re-run retries" in result.stderr and "s3://faults/" in result.stderr
    fs.invalidate_cache()
    for path in fs.find("faults/w70"):  # whatever was written is complete
        if path.endswith(".parquet"):
            assert pq.read_table(fs.open(path, "rb")).num_rows > 0
    # A re-run without faults does exactly what is left: all 3 tracks, same windows as a clean run.
    assert main(["prepare", f"{bucket}/stems", f"{bucket}/w70", "--s3-endpoint-url", s3_endpoint]) == 0
    assert main(["prepare", f"{bucket}/stems", f"{bucket}/clean", "--s3-endpoint-url", s3_endpoint]) == 0
    fs.invalidate_cache()
    assert _tables(fs, "faults/w70") == _tables(fs, "faults/clean")
    assert len(_tables(fs, "faults/clean")) == 3

    proxy.rate, proxy.seed = 0.7, 4
    result = _run_driver(["generate", checkpoint, f"{bucket}/bass", f"{bucket}/g70", "--s3-endpoint-url",
                          proxy.url, "--griffin-lim-iters", "4"], address, attempts=3)
    proxy.rate = 0.0
    assert result.returncode == 1, result.stderr[-3000:]
    assert not _own_traceback(result.stderr), result.stderr[-3000:]
    assert "re-run retries" in result.stderr
    assert main(["generate", checkpoint, f"{bucket}/bass", f"{bucket}/g70", "--s3-endpoint-url",
                 s3_endpoint, "--griffin-lim-iters", "4"]) == 0
    fs.invalidate_cache()
    manifest = pq.read_table(fs.open("faults/g70/manifest.parquet", "rb"))
    assert sorted(manifest.column("clip_id").to_pylist()) == sorted(CLIP_NAMES)
    errors = pq.read_table(fs.open("faults/g70/errors.parquet", "rb"))
    assert errors.num_rows == 0


# ---------------------------------------------------------------- resets in the middle of a body
#
# The common real failure: the status line and headers arrive (with the full Content-Length),
# then half the body, then the connection resets.  The S3 clients' retries end at the status
# line, so the storage layer retries the whole read (pipelines.storage.retried_read).  Each
# job runs three times on the same data: at 60% faults (mid-body resets and 503s, 3 attempts)
# it exits 1 naming objects; a clean re-run into the same OUTPUT completes (the reference);
# at 20% (default retry policy) it completes with that reference's outputs.


@pytest.fixture
def midbody(proxy):
    """set(rate, seed, only=None): faults on `proxy` are mid-body resets and 503 SlowDowns,
    half each (`only`: on the requests it matches, see FaultProxy); restored to none (and
    the module's other mix) afterwards."""
    def set_faults(rate: float, seed: int, only: str | None = None) -> None:
        with proxy._lock:  # each key's n-th request from here on: the same faults in every session
            proxy._seen.clear()
            proxy.rate, proxy.seed, proxy.reset_share, proxy.midbody_share = rate, seed, 0.0, 0.5
            proxy.only = only

    yield set_faults
    proxy.rate, proxy.reset_share, proxy.midbody_share, proxy.only = 0.0, 0.5, 0.0, None


AUDIO_READS = r"^GET .*\.wav$"  # at 60% on every request, a job fails in its first listing


@pytest.fixture(scope="module")
def s3_checkpoint(bucket, checkpoint, s3_endpoint) -> str:
    """The tiny checkpoint on S3: generate's and evaluate's pre-flight read it through the proxy."""
    from pathlib import Path

    fs = _s3fs(s3_endpoint)
    for path in Path(checkpoint).iterdir():
        fs.pipe_file(f"faults/ckpt/{Path(checkpoint).name}/{path.name}", path.read_bytes())
    return f"{bucket}/ckpt/{Path(checkpoint).name}"


@pytest.fixture(scope="module")
def evalset(bucket, s3_endpoint, tmp_path_factory) -> str:
    """s3://faults/evalset: 2 clips of 7 s in the musdb layout (<clip>/bass.wav, <clip>/drums.wav)."""
    from pipelines.synth import write_dataset

    local = tmp_path_factory.mktemp("evalset")
    write_dataset(local, tracks=2, seconds=7.0, seed=3)
    fs = _s3fs(s3_endpoint)
    for path in local.rglob("*.wav"):
        if path.stem in ("bass", "drums"):
            fs.pipe_file(f"faults/evalset/{path.parent.name}/{path.name}", path.read_bytes())
    return f"{bucket}/evalset"


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    from infer.inception import save_random_weights

    return str(save_random_weights(str(tmp_path_factory.mktemp("inception") / "inception.pth"), seed=0))


def _fails_naming_objects(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert not _own_traceback(result.stderr), result.stderr[-3000:]
    assert "re-run retries" in result.stderr and "s3://faults/" in result.stderr, result.stderr[-3000:]


def _cut(proxy) -> int:
    return proxy.counts["midbody"]


@pytest.mark.timeout(600)
def test_prepare_with_midbody_resets(ray_local, proxy, midbody, bucket, s3_endpoint):
    from cycledrums_cli import main

    address = ray_local.get_runtime_context().gcs_address
    fs = _s3fs(s3_endpoint)
    # 60% of the audio reads: the tracks whose reads run out of retries are reported by name
    # (a StorageError naming the object), the job exits 1 and says a re-run retries them.
    midbody(0.6, 3, only=AUDIO_READS)  # seed 3: two tracks (one of them the test split's) fail
    cut = _cut(proxy)
    result = _run_driver(["prepare", f"{bucket}/stems", f"{bucket}/mb60", "--s3-endpoint-url", proxy.url],
                         address, attempts=3)
    midbody(0.0, 2)
    assert _cut(proxy) > cut, proxy.counts
    _fails_naming_objects(result)
    assert "failed on storage" in result.stderr, result.stderr[-3000:]
    assert "reading s3://faults/stems/" in result.stderr and ".wav failed after 3 attempts" in result.stderr
    # The clean re-run completes what is left; its windows are the reference.
    assert main(["prepare", f"{bucket}/stems", f"{bucket}/mb60", "--s3-endpoint-url", s3_endpoint]) == 0
    fs.invalidate_cache()
    reference = _tables(fs, "faults/mb60")
    assert len(reference) == 3

    midbody(0.2, 3)
    cut = _cut(proxy)
    assert main(["prepare", f"{bucket}/stems", f"{bucket}/mb20", "--s3-endpoint-url", proxy.url]) == 0
    midbody(0.0, 3)
    assert _cut(proxy) - cut >= 2, proxy.counts  # bodies really were cut short, and retried
    fs.invalidate_cache()
    summary = json.loads(fs.cat_file("faults/mb20/_summary.json"))
    assert (summary["tracks_ok"], summary["tracks_failed"]) == (3, 0), summary
    assert _tables(fs, "faults/mb20") == reference


def _drums(fs, prefix: str) -> dict:
    return {name: sf.read(io.BytesIO(fs.cat_file(f"{prefix}/{name}/drums.wav")))[0] for name in CLIP_NAMES}


@pytest.mark.timeout(600)
def test_generate_with_midbody_resets(ray_local, proxy, midbody, bucket, s3_checkpoint, s3_endpoint):
    from cycledrums_cli import main

    address = ray_local.get_runtime_context().gcs_address
    fs = _s3fs(s3_endpoint)
    args = [s3_checkpoint, f"{bucket}/bass"]
    midbody(0.6, 2)
    result = _run_driver(["generate", *args, f"{bucket}/gmb60", "--s3-endpoint-url", proxy.url,
                          "--griffin-lim-iters", "4"], address, attempts=3)
    midbody(0.0, 2)
    _fails_naming_objects(result)
    assert main(["generate", *args, f"{bucket}/gmb60", "--s3-endpoint-url", s3_endpoint,
                 "--griffin-lim-iters", "4"]) == 0
    fs.invalidate_cache()
    reference = _drums(fs, "faults/gmb60")

    midbody(0.2, 3)
    cut = _cut(proxy)
    assert main(["generate", *args, f"{bucket}/gmb20", "--s3-endpoint-url", proxy.url,
                 "--griffin-lim-iters", "4"]) == 0
    midbody(0.0, 3)
    assert _cut(proxy) - cut >= 2, proxy.counts
    fs.invalidate_cache()
    manifest = pq.read_table(fs.open("faults/gmb20/manifest.parquet", "rb"))
    assert sorted(manifest.column("clip_id").to_pylist()) == sorted(CLIP_NAMES)
    assert pq.read_table(fs.open("faults/gmb20/errors.parquet", "rb")).num_rows == 0
    for name, drums in _drums(fs, "faults/gmb20").items():
        assert drums.shape == reference[name].shape and np.abs(drums - reference[name]).max() <= 2 / 32768


def _clips_csv(fs, prefix: str):
    import pandas as pd

    return pd.read_csv(io.BytesIO(fs.cat_file(f"{prefix}/clips.csv")), keep_default_na=False) \
        .sort_values(["set", "clip_id"]).reset_index(drop=True)


@pytest.mark.timeout(900)  # its three evaluate runs took 7.8 min on the 2-core machine under a load average of ~50
def test_evaluate_with_midbody_resets(ray_local, proxy, midbody, bucket, s3_checkpoint, evalset,
                                      inception_weights, s3_endpoint):
    from cycledrums_cli import main

    address = ray_local.get_runtime_context().gcs_address
    fs = _s3fs(s3_endpoint)
    options = ["--inception-weights", inception_weights, "--griffin-lim-iters", "4", "--no-baselines",
               "--report-clips", "0"]  # the least work that still reads every clip's bass and drums
    # 60% of the audio reads, which the Ray actors make: the job stops naming the object.
    midbody(0.6, 7, only=AUDIO_READS)  # seed 7: a bass and a drums read fail
    result = _run_driver(["evaluate", s3_checkpoint, evalset, f"{bucket}/emb60", "--s3-endpoint-url", proxy.url,
                          *options], address, attempts=3)
    midbody(0.0, 2)
    _fails_naming_objects(result)
    assert main(["evaluate", s3_checkpoint, evalset, f"{bucket}/emb60", "--s3-endpoint-url", s3_endpoint,
                 *options]) == 0
    fs.invalidate_cache()
    reference = _clips_csv(fs, "faults/emb60")
    assert len(reference[reference["set"] == "cyclegan"]) == 2

    midbody(0.2, 3)
    cut = _cut(proxy)
    assert main(["evaluate", s3_checkpoint, evalset, f"{bucket}/emb20", "--s3-endpoint-url", proxy.url,
                 *options]) == 0
    midbody(0.0, 3)
    assert _cut(proxy) - cut >= 2, proxy.counts
    fs.invalidate_cache()
    ours = _clips_csv(fs, "faults/emb20")
    assert list(ours["set"]) == list(reference["set"]) and list(ours["clip_id"]) == list(reference["clip_id"])
    figures = [c for c in reference.columns if c.startswith(("stoi_", "level_", "spectrum_", "rhythm_", "density_"))]
    assert figures
    np.testing.assert_allclose(ours[figures].to_numpy(float), reference[figures].to_numpy(float),
                               rtol=1e-4, atol=1e-4)


def test_a_read_cut_in_its_body_is_retried_then_named(monkeypatch):
    """retried_read: a body fault re-runs the whole read, up to AWS_MAX_ATTEMPTS reads; past
    them a StorageError names the object; other errors are not retried."""
    import aiohttp

    from pipelines import storage

    monkeypatch.setattr(storage, "backoff_seconds", lambda attempt: 0.0)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    calls = []

    def flaky(fails: int, error=aiohttp.ClientPayloadError("Response payload is not completed")):
        def read():
            calls.append(1)
            if len(calls) <= fails:
                raise error
            return b"data"
        return read

    assert storage.retried_read("reading", "s3://b/k.wav", flaky(2)) == b"data" and len(calls) == 3
    calls.clear()
    with pytest.raises(storage.StorageError, match=r"reading s3://b/k\.wav failed after 3 attempts "
                       r"\(ClientPayloadError: .*\); a re-run retries it") as caught:
        storage.retried_read("reading", "s3://b/k.wav", flaky(3))
    assert len(calls) == 3 and "\n" not in str(caught.value)
    for error in (ConnectionResetError(104, "reset"), __import__("http.client").client.IncompleteRead(b"x")):
        calls.clear()
        assert storage.retried_read("reading", "s3://b/k.wav", flaky(1, error)) == b"data"
    calls.clear()
    with pytest.raises(FileNotFoundError):  # not a fault: once, unchanged
        storage.retried_read("reading", "s3://b/k.wav", flaky(5, FileNotFoundError("k.wav")))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(aiohttp.ClientPayloadError):  # a local path: read once, unchanged
        storage.retried_read("reading", "/tmp/k.wav", flaky(5))
    assert len(calls) == 1


@pytest.mark.timeout(300)
def test_a_storage_error_in_a_ray_data_actor_reaches_the_driver_as_one_line(ray_local):
    import ray.data

    from pipelines.storage import StorageError, storage_faults_in_ray

    message = "reading s3://b/k.wav failed after 3 attempts (ClientPayloadError: cut); a re-run retries it"

    class Reader:
        def __call__(self, batch):
            raise StorageError(message)

    ds = ray.data.from_items([{"a": 1}]).map_batches(Reader, concurrency=1)
    with pytest.raises(StorageError) as caught, storage_faults_in_ray():
        ds.take_all()
    assert str(caught.value) == message
    with pytest.raises(ValueError), storage_faults_in_ray():  # anything else passes unchanged
        raise ValueError("not a storage fault")
