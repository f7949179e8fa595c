"""Connecting a job to Ray: an existing cluster when there is one, else a small local one."""
from __future__ import annotations

import contextlib
import logging
import os

from cluster.console import quiet_ray_logs
from cluster.errors import UserError

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
# What Ray raises when its processes do not come up in time (ray/_private/node.py, services.py).
START_TIMEOUTS = ("timed out during startup", "GCS has become overloaded", "Deadline Exceeded",
                  "Timed out while waiting for", "Failed to connect to GCS")


class RayStartError(UserError):
    """Ray did not start (a local Ray) or could not be reached (a cluster) in time."""


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` (or $RAY_ADDRESS, as inside `ray job submit`),
    else start a local Ray on this machine.

    The local Ray listens on 127.0.0.1 only (node address, dashboard, metrics): a run on
    a laptop or CI machine opens nothing to the network.  It advertises at least 4
    logical CPUs even on a 2-core machine: logical CPUs are scheduling tokens, and a
    job whose training workers hold one each must still leave tokens for its Ray Data
    tasks, or it waits forever.  It also declares the custom resource `node_cores` (the
    machine's cores), so jobs that run one busy process per core do not count tokens as
    cores (cluster.resources.ClusterView.cores).  Its object store takes Ray's default share of the
    machine's memory (no fixed cap).

    The test-only switch CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU (cluster/resources.py)
    travels to the job's workers through the runtime environment.
    """
    import ray

    from cluster.cluster_view import NODE_CORES
    from cluster.placement import STANDIN_ENV

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {STANDIN_ENV: os.environ[STANDIN_ENV]}} if os.environ.get(STANDIN_ENV) else None
    quiet_ray_logs(verbose=log.isEnabledFor(logging.DEBUG))  # before: Ray logs while starting
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        with start_timeouts_as_user_errors(address):
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        quiet_ray_logs(verbose=log.isEnabledFor(logging.DEBUG))
        return
    cpus = local_cpus(num_cpus)
    log.info("starting a local Ray with %d logical CPUs on %s", cpus, LOCAL_HOST)
    with keep_local(), start_timeouts_as_user_errors(None):
        ray.init(num_cpus=cpus, resources={NODE_CORES: float(os.cpu_count() or 1)}, include_dashboard=False,
                 log_to_driver=True, runtime_env=runtime_env, _node_ip_address=LOCAL_HOST,
                 dashboard_host=LOCAL_HOST)
    quiet_ray_logs(verbose=log.isEnabledFor(logging.DEBUG))


@contextlib.contextmanager
def start_timeouts_as_user_errors(address: str | None):
    """Ray's start-up timeouts (its processes did not answer within Ray's own limits, as on a
    machine whose cores are all busy) become one line saying what to try; Ray's partly
    started processes are shut down first.  Other errors pass unchanged."""
    import ray

    try:
        yield
    except Exception as err:
        text = str(err)
        if not any(marker in text for marker in START_TIMEOUTS):
            raise
        try:
            ray.shutdown()
        except Exception as cleanup:  # the start-up error is the one to report
            log.debug("ray.shutdown after a failed start: %s", cleanup)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        busy = f" (load average {load:.0f} on {os.cpu_count()} cores)" if load is not None else ""
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        if address:
            raise RayStartError(
                f"the Ray cluster at {address} did not answer in time: {first}; check that it is "
                "running and reachable, then run the job again") from err
        raise RayStartError(
            f"the local Ray did not start in time{busy}: {first}; run the job again when the "
            "machine is less busy (other Ray sessions or heavy processes hold its cores), or "
            "give --address of a running Ray cluster") from err


@contextlib.contextmanager
def keep_local():
    """While the local Ray starts, make it use the loopback address for its node.

    `ray.init(_node_ip_address="127.0.0.1")` alone is not enough: Ray turns a loopback
    address into the machine's network address (services.resolve_ip_for_localhost)
    unless multi-node clusters are switched off, which is what Ray does on macOS and
    Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).  The variable is read at import, so
    both the environment (for the processes Ray starts) and the loaded constant are set,
    and both are restored afterwards: a later `ray start` or a client of a real cluster
    started from this process must not inherit the switch.
    """
    import ray._private.ray_constants as ray_constants

    saved_env = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved_env


def local_cpus(num_cpus: int | None = None) -> int:
    return num_cpus or max(4, os.cpu_count() or 1)


def local_cluster_view(address: str | None = None, num_cpus: int | None = None):
    """What the local Ray `init_ray` would start has (a ClusterView), known before starting it,
    so an impossible request fails in a second; None when the job joins a cluster."""
    from cluster.cluster_view import ClusterView, NODE_CORES

    if address or os.environ.get("RAY_ADDRESS"):
        return None
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ClusterView([{"CPU": float(local_cpus(num_cpus)), "GPU": float(gpus), NODE_CORES: float(os.cpu_count() or 1)}])
