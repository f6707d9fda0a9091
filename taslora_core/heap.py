"""Keep freed memory in the process's heap (glibc), so that a forward pass does not page-fault its temporaries in.

glibc's malloc serves blocks above a threshold with mmap and returns them to the system when freed, and trims
the heap's top when much of it is free; it moves both thresholds by what it last freed. Two models that
alternate in one process (an A/B timing) keep moving them, and then each forward pass can fault its activations
in afresh. Measured (`benchmarks/bench_page_faults.py --runs 10`: AutoFormer-T's largest subnet and timm's ViT of
its size, batch 8, one thread, 8 alternating pairs per process, 2026-12-07): malloc as it comes, 3 of 5 processes
had 18.7-35.2 thousand minor page faults per forward of timm's model and 0.5-19.9 thousand of ours (70-140 MB of
fresh pages per forward); with `keep_freed_memory`, at most 185 in every process. A model timed alone did not
fault.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2): blocks above are mmapped
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top beyond this goes back to the system


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc malloc's mmap threshold (32 MiB) and trim threshold (1 GiB) for this process: freed blocks up to
    32 MiB stay in the heap for the next allocation. Idempotent; True when applied, False where the C library has
    no `mallopt` (not glibc: macOS, musl) or refuses the values. The process's resident memory then stays near
    its peak instead of shrinking between passes."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
