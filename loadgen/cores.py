"""How many cores this process may use: the CPUs it may run on (its affinity),
and no more than its control group's CPU quota (a container's limit, such as a
Kubernetes pod's ``resources.limits.cpu``), rounded up. ``os.cpu_count()`` is
the machine's, which in a pod on a large node would plan dozens of workers for
two cores' worth of time. Workers, serving processes and the capacity search's
judgement of a saturated machine all count cores here."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cores(cgroup: Path = CGROUP) -> int:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    if quota is not None:
        usable = min(usable, max(1, math.ceil(quota - 1e-9)))
    return max(1, usable)


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The control group's CPU limit in cores (cgroup v2 ``cpu.max``, else v1's
    CFS quota and period); None where there is none or it cannot be read."""
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
        if limit == "max":
            return None
        return int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
