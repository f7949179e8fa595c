"""Connecting a job to Ray: an existing cluster when there is one, else a small local one."""
from __future__ import annotations

import logging
import os

from cluster.console import quiet_ray_logs

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` (or $RAY_ADDRESS, as inside `ray job submit`),
    else start a local Ray on this machine.

    The local Ray advertises at least 4 logical CPUs even on a 2-core machine:
    logical CPUs are scheduling tokens, and a job whose training workers hold one
    each must still leave tokens for its Ray Data tasks, or it waits forever.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        quiet_ray_logs(verbose=log.isEnabledFor(logging.DEBUG))
        return
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    log.info("starting a local Ray with %d logical CPUs", cpus)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True,
             object_store_memory=_local_object_store_bytes())
    quiet_ray_logs(verbose=log.isEnabledFor(logging.DEBUG))


def _local_object_store_bytes() -> int:
    # A quarter of RAM, capped at 4 GiB: enough for streaming blocks of windows.
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return int(min(total // 4, 4 << 30))
