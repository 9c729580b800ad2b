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


def return_free_memory() -> bool:
    """Hand memory that the process freed back to the OS (glibc's ``malloc_trim``), where glibc is
    the allocator; False elsewhere. glibc keeps freed blocks in its heaps and trims only a heap's
    top, so after a model version is released (its weights and ORT buffers, freed in the middle
    of a heap) the RSS would stay at the peak of the swap."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
