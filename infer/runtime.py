"""Shared bits of the Ray Data jobs in infer/: where model actors run, progress lines, file writes."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from cluster.console import Progress  # noqa: F401  (the jobs' progress lines live there)
from pipelines.storage import write_bytes

log = logging.getLogger(__name__)

ACTOR_MEMORY = 2 << 30  # bytes of RAM reserved per model actor (Inception-v3 on CPU peaks near 0.9 GiB)


@dataclass(frozen=True)
class ActorPlan:
    """Resources of a model stage: one actor per GPU when the cluster has GPUs, else CPU actors."""

    size: int
    num_gpus: float
    num_cpus: float
    device: str
    memory: int = ACTOR_MEMORY

    def compute(self):
        import ray.data

        return ray.data.ActorPoolStrategy(size=self.size)

    def remote_args(self) -> dict:
        # The memory reservation also keeps Ray Data from fusing the CPU stage before the
        # model stage into the model actors (it fuses maps with identical resources), so
        # decoding runs in its own tasks and never holds up the model.
        args = {"num_cpus": self.num_cpus, "memory": self.memory}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        return args


def actor_plan(cpu_actors: int | None = None, max_gpu_actors: int | None = None) -> ActorPlan:
    """GPU actors (one per GPU, 1 CPU each) when the cluster has GPUs, else CPU actors.

    On a CPU-only cluster the model actors hold one CPU each; by default there are
    half the cluster's CPUs minus one of them (at least one), leaving the rest to
    the decode / invert stages, so every stage can always be scheduled (a 4-CPU
    local Ray gets one model actor).
    """
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        size = min(gpus, max_gpu_actors) if max_gpu_actors else gpus
        return ActorPlan(size=size, num_gpus=1, num_cpus=1, device="cuda")
    if cpu_actors is None:
        cpu_actors = int(resources.get("CPU", 1)) // 2 - 1
    return ActorPlan(size=max(1, cpu_actors), num_gpus=0, num_cpus=1, device="cpu")


def remove_quietly(uri: str, s3_endpoint_url: str | None = None) -> None:
    """Delete a file if it exists (cleaning up a clip whose outputs were only partly written)."""
    from pipelines.storage import fsspec_filesystem

    try:
        fs, inner = fsspec_filesystem(uri, s3_endpoint_url)
        if fs.isfile(inner):
            fs.rm(inner)
    except (OSError, ValueError):
        log.warning("could not remove the partial output %s", uri)


def join_uri(root: str, *parts: str) -> str:
    import posixpath

    if "://" in root:
        return posixpath.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)


def write_table(table, root: str, name: str, s3_endpoint_url: str | None = None) -> list[str]:
    """Write a pyarrow table as `name`.parquet and `name`.csv under `root`; returns the URIs."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    pq_buf = io.BytesIO()
    pq.write_table(table, pq_buf)
    csv_buf = io.BytesIO()
    pacsv.write_csv(table, csv_buf)
    uris = [join_uri(root, f"{name}.parquet"), join_uri(root, f"{name}.csv")]
    write_bytes(uris[0], pq_buf.getvalue(), s3_endpoint_url)
    write_bytes(uris[1], csv_buf.getvalue(), s3_endpoint_url)
    return uris
