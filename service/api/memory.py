"""Process memory settings that must be made before the serving threads start."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("service.memory")

M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at `arenas` (0 or a MALLOC_ARENA_MAX in the environment: leave glibc alone).

    glibc gives each thread that allocates under contention an arena of its own, up to 8 per core, and returns
    little of an arena's freed memory to the system; with a thread pool decoding uploads, resident memory creeps
    up for hours. A cap made before those threads exist keeps them on a few shared arenas. True if it was set.
    """
    if arenas == 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to cap
        log.debug("no glibc mallopt; malloc arenas left as they are")
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
