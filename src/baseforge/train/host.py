"""Host-side tuning for training on a CPU: keep freed memory for reuse instead of unmapping it.

glibc's malloc serves every block over 32 MB (activations, gradients, optimizer temporaries of a
GPT with a 50k vocabulary) with a fresh mmap and returns it with munmap on free, so each training
step page-faults its big tensors in again, one 4 KB page at a time; on a 2-core machine that cost
about 15% of a step (benchmarks/results/train-throughput.md). Serving them from the heap and not
trimming it makes the memory of one step the memory of the next. The same thing that LD_PRELOADing
jemalloc or tcmalloc does for PyTorch on CPU, without a dependency. Linux/glibc only; a no-op
elsewhere or if the process already chose its own allocator settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc malloc to never mmap large blocks and never trim the heap; True if it did."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
