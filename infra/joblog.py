"""The driver's log, streamed to ``jobs/<id>/driver.log`` in the store.

:class:`LogStream` puts a pipe behind file descriptors 1 and 2, so everything the driver and its
child processes (local Dask workers) print is copied to the original output (the batch job's
log file, the detached process's log file) and kept in memory. Every few seconds, and at the
end, the whole log is written to the store as one object (S3 has no append). Values of
credential-like environment variables are replaced by ``***`` before any upload.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Mapping

from infra.jobs import Job

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|SESSION|CREDENTIAL|PRIVATE", re.IGNORECASE)
LIMIT_BYTES = 4 * 1024 * 1024  # the log keeps its last 4 MiB


def redact(text: bytes, environ: Mapping[str, str] | None = None) -> bytes:
    """``text`` with the value of every credential-like environment variable replaced.

    Parameters
    ----------
    text : bytes
        Log content.
    environ : mapping, optional
        The environment to take secrets from (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if SECRET_NAME.search(name) and len(value) >= 6:
            text = text.replace(value.encode(), b"***")
    return text


class LogStream:
    """Tee fds 1 and 2 into memory and upload the whole log to the job every ``interval_s``.

    Parameters
    ----------
    job : Job
        Whose ``driver.log`` to write.
    interval_s : float
        Seconds between uploads (only when the log grew).
    """

    def __init__(self, job: Job, interval_s: float = 3.0) -> None:
        self.job = job
        self.interval_s = interval_s
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._uploaded = -1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._saved: tuple[int, int] | None = None

    def start(self) -> LogStream:
        """Redirect fds 1 and 2 through the tee and start the reader and uploader threads."""
        _flush()
        read_end, write_end = os.pipe()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        for target in (lambda: self._read(read_end), self._upload_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, fd: int) -> None:
        while chunk := os.read(fd, 65536):
            try:
                os.write(self._saved[0], chunk)
            except OSError:
                pass  # the original output is gone (e.g. a closed terminal): keep the copy
            with self._lock:
                self._buffer += chunk
                if len(self._buffer) > LIMIT_BYTES:
                    del self._buffer[: len(self._buffer) - LIMIT_BYTES]
        os.close(fd)

    def _upload_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            _flush()
            self.upload()

    def upload(self) -> None:
        """Write the log to the store if it changed since the last upload."""
        with self._lock:
            if len(self._buffer) == self._uploaded:
                return
            data, self._uploaded = bytes(self._buffer), len(self._buffer)
        try:
            self.job.write_log(redact(data))
        except Exception as err:  # never let logging stop the driver
            self._uploaded = -1
            os.write(self._saved[1], f"driver.log upload failed: {err}\n".encode())

    def stop(self) -> None:
        """Restore fds 1 and 2, collect what is still in the pipe and upload a last time."""
        if self._saved is None:
            return
        _flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=3)  # a lingering child may hold the pipe: do not wait for it
        self.upload()
        if not any(thread.is_alive() for thread in self._threads):
            os.close(self._saved[0])  # else the reader may still copy to it: leave it open
            os.close(self._saved[1])
        self._saved = None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
