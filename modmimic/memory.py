"""How much memory a process may still allocate, asked before allocating anything large (a batch, an episode store
declared by a file's shapes)."""
from __future__ import annotations

import os
import resource


def available_memory_bytes(device) -> int | None:
    """Free memory of ``device``: CUDA, the device's; CPU, the least of the kernel's MemAvailable, the cgroup's
    remaining limit and the room left under ``ulimit -v``. None when unknown."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    limits = []
    try:
        with open("/proc/meminfo") as f:
            limits += [int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    try:  # a container's memory limit (cgroup v2)
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limits.append(int(f.read()) - int(g.read()))
    except (OSError, ValueError):  # no cgroup v2, or "max"
        pass
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]  # ulimit -v
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                limits.append(soft - int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            limits.append(soft)
    return min(limits) if limits else None
