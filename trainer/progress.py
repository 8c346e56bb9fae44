"""A dependency-free progress line for long loops (TTY: redrawn in place; logs: every 10%)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    stream = sys.stderr
    tty = stream.isatty()
    start = time.monotonic()
    step = max(1, total // 10)
    for done, item in enumerate(items, 1):
        yield item
        if tty or done % step == 0 or done == total:
            elapsed = time.monotonic() - start
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else 0.0
            speed = f"{rate:.0f}/s" if rate >= 10 else f"{rate:.2g}/s"  # slow steps: not "0/s"
            line = f"{label}: {done}/{total} ({100 * done / max(total, 1):.0f}%) {speed} eta {eta:.0f}s"
            stream.write(("\r" + line) if tty else line + "\n")
            stream.flush()
    if tty:
        stream.write("\n")
