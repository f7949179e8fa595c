"""Shared fixtures: one local Ray and one local S3 (moto server) per test session.

S3: fake credentials and the moto endpoint go into the environment at import time,
before Ray starts, so Ray workers (other processes) inherit them.  Nothing in the
tests talks to any address but 127.0.0.1.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DATA = TESTS / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_PORT = _free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": S3_ENDPOINT,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint (moto server) on 127.0.0.1; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh, empty bucket for one test; yields its name."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    yield name


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (4 logical CPUs on any machine, no dashboard), with
    the machine's cores declared as the jobs' own local Ray declares them (cluster/ray_runtime.py)."""
    import os

    import ray

    from cluster.cluster_view import NODE_CORES

    ray.init(num_cpus=4, resources={NODE_CORES: float(os.cpu_count() or 1)}, include_dashboard=False,
             object_store_memory=400 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_task_names(ray_local):
    """A function: the names of the tasks and actor methods this session's Ray has run, from
    ray.timeline()'s task events (they reach Ray's GCS a moment after the task), waiting up
    to 15 s until one containing `expect` shows."""
    import time

    def names(expect: str) -> set[str]:
        deadline = time.monotonic() + 15
        while True:
            seen = {str(e.get("cat", "")) for e in ray_local.timeline()}
            if any(expect in n for n in seen) or time.monotonic() > deadline:
                return seen
            time.sleep(0.5)

    return names


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small built-in multitrack data set (musdb18-HQ layout): 4 train + 2 test tracks of 16 s."""
    from pipelines.synth import write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, tracks=6, seconds=16.0, seed=0)
    return root
