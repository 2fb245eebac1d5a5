"""Peak memory of a block of code (resident set), for the evaluation's cost columns."""

from __future__ import annotations

import os


class PeakRSS:
    """Context manager: the peak resident memory above the level at entry, in MB
    (``extra_mb``), sampled every ``interval`` seconds from ``/proc/self/statm`` by a thread.
    NaN where ``/proc`` is missing. Includes everything the process allocates meanwhile
    (torch, numpy, imported modules), which is what a user pays for a fit."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.extra_mb = float("nan")

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = self._rss()
            if now is not None:
                self._peak = max(self._peak, now)

    def __enter__(self) -> PeakRSS:
        import threading

        self._start = self._rss()
        self._peak = self._start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        end = self._rss()
        if self._start is not None and end is not None:
            self.extra_mb = (max(self._peak, end) - self._start) / 2**20
