"""Small helpers more than one stage needs (one implementation each). Stdlib only."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (a model or dataset never sits in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells us; cgroup quotas show up
    there on Linux), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    return max(1, n)
