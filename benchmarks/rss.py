"""Peak resident memory of this process's children (Dask workers), sampled in a thread."""

from __future__ import annotations

import threading
import time
from types import TracebackType


class ChildPeakRSS:
    """Context manager: the largest RSS any child process reached while it was open.

    ``peak_mib`` is the maximum over children (one worker's peak, not their sum), sampled every
    ``interval_s`` seconds, so a spike shorter than that may be missed.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak_mib(self) -> float:
        """Largest child RSS seen, in MiB (0 when no child was seen)."""
        return max(self.peaks.values(), default=0) / 2**20

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> ChildPeakRSS:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
