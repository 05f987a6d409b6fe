"""A small progress bar on stderr (no dependency), fed by the sampler's progress counters."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``name [=====>     ]  45% eta 12s``, redrawn at most 10 times a second."""

    def __init__(self, name: str, stream: TextIO = sys.stderr, width: int = 40) -> None:
        self.name = name
        self.stream = stream
        self.width = width
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` sample-steps."""
        now = time.monotonic()
        if total <= 0 or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = min(done / total, 1.0)
        fill = int(frac * self.width)
        arrow = ">" if fill < self.width else ""
        bar = "=" * fill + arrow + " " * (self.width - fill - len(arrow))
        elapsed = now - self.start
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        self.stream.write(f"\r{self.name} [{bar}] {100 * frac:3.0f}% eta {eta_s} ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Clears the bar's line."""
        if self.drawn:
            self.stream.write("\r" + " " * (len(self.name) + self.width + 20) + "\r")
            self.stream.flush()
