"""A lease in the store so two runs of the same study never overlap (``locks/run.json``).

The holder writes ``{owner, host, pid, acquired, renewed, expires}``, waits ``settle_s``, re-reads
the object and only then trusts that it owns the lease (S3 has no create-if-absent everywhere:
the last writer wins, and the re-read tells each contender who that was). A heartbeat thread
renews the expiry while the run lives; a crashed driver's lease expires after ``ttl_s`` (or at
once when it was held by a process of this host that no longer exists) and the next run takes it
over with a warning. See docs/design.md, "Run lease", for the guarantee and its limit.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from infra.storage import Store

LEASE_KEY = "locks/run.json"
TTL_ENV = "BOLDCLOUD_LEASE_TTL_S"
DEFAULT_TTL_S = 120.0
SETTLE_S = 1.0
LEASE_BUSY = 4  # exit code of a run refused because another run holds the lease


class LeaseHeld(RuntimeError):
    """Another live run holds the study's lease."""

    def __init__(self, store: Store, holder: dict[str, Any]) -> None:
        self.holder = holder
        super().__init__(
            f"another run holds the lease {store.full_url(LEASE_KEY)}: {describe(holder)}. "
            "Wait for it to finish, or run again with --wait to queue behind it; a crashed "
            "run's lease expires by itself."
        )


def iso(ts: float) -> str:
    """A unix time as ISO 8601 UTC (seconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def describe(holder: dict[str, Any]) -> str:
    """``owner on host (pid N), expires at T`` for messages."""
    return (
        f"owner {holder.get('owner')} on {holder.get('host')} (pid {holder.get('pid')}), "
        f"expires at {iso(float(holder.get('expires', 0)))}"
    )


def default_ttl() -> float:
    """Lease lifetime in seconds: ``$BOLDCLOUD_LEASE_TTL_S`` or 120."""
    raw = os.environ.get(TTL_ENV)
    try:
        ttl = float(raw) if raw else DEFAULT_TTL_S
    except ValueError as err:
        raise ValueError(
            f"{TTL_ENV}={raw!r} is not a number of seconds; unset it or fix it."
        ) from err
    if ttl <= 0:
        raise ValueError(f"{TTL_ENV}={raw!r} must be positive (seconds).")
    return ttl


def _pid_dead(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why a lease no longer protects anything (expired, dead holder), or None when live."""
    now = time.time() if now is None else now
    if float(holder.get("expires", 0)) <= now:
        return f"expired at {iso(float(holder.get('expires', 0)))}"
    if _pid_dead(holder):
        return f"its process {holder.get('pid')} on this host no longer exists"
    return None


class Lease:
    """The run lease of one store.

    Parameters
    ----------
    store : Store
        The study's store.
    ttl_s : float, optional
        Lifetime without renewal (default :func:`default_ttl`); renewed every ``ttl_s / 3``.
    settle_s : float
        Pause between writing the lease and re-reading it to confirm ownership.
    warn : callable, optional
        Called with a message when an expired or dead lease is taken over.
    """

    def __init__(
        self,
        store: Store,
        ttl_s: float | None = None,
        settle_s: float = SETTLE_S,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.ttl_s = default_ttl() if ttl_s is None else float(ttl_s)
        self.settle_s = settle_s
        self.warn = warn or (lambda message: None)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.acquired: float | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> dict[str, Any] | None:
        """The lease object in the store, or None when free."""
        try:  # no exists() first: a listing cache could hide a fresh object
            return self.store.read_json(LEASE_KEY)
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable: treat as free, the write-and-confirm step decides

    def _body(self, now: float) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired": self.acquired or now,
            "renewed": now,
            "expires": now + self.ttl_s,
            "ttl_s": self.ttl_s,
            "acquired_iso": iso(self.acquired or now),
            "expires_iso": iso(now + self.ttl_s),
        }

    def try_acquire(self) -> None:
        """Take the lease once or raise :class:`LeaseHeld`."""
        holder = self.current()
        if holder is not None and holder.get("owner") != self.owner:
            reason = stale_reason(holder)
            if reason is None:
                raise LeaseHeld(self.store, holder)
            self.warn(f"taking over a stale run lease ({reason}): {describe(holder)}")
        now = time.time()
        self.store.write_json(LEASE_KEY, self._body(now))
        time.sleep(self.settle_s)
        confirmed = self.current()
        if confirmed is None or confirmed.get("owner") != self.owner:
            raise LeaseHeld(self.store, confirmed or {"owner": "unknown", "expires": 0})
        self.acquired = now
        self._start_heartbeat()

    def acquire(self, wait: bool = False, poll_s: float = 5.0) -> Lease:
        """Take the lease; with ``wait``, poll until the holder releases it or it expires."""
        while True:
            try:
                self.try_acquire()
                return self
            except LeaseHeld:
                if not wait:
                    raise
            time.sleep(poll_s)

    def renew(self) -> bool:
        """Push the expiry forward; False (and :attr:`lost` set) when another owner took it."""
        holder = self.current()
        if holder is not None and holder.get("owner") != self.owner:
            self.lost.set()
            self.warn(f"run lease lost to {describe(holder)}; finish or stop this run")
            return False
        self.store.write_json(LEASE_KEY, self._body(time.time()))
        return True

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="boldcloud-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except OSError as err:  # store briefly unreachable: try again next beat
                self.warn(f"could not renew the run lease ({err}); retrying")

    def release(self) -> None:
        """Stop renewing and delete the lease if this process still owns it (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.acquired is None:
            return
        self.acquired = None
        holder = self.current()
        if holder is not None and holder.get("owner") == self.owner:
            self.store.remove(LEASE_KEY)

    def __enter__(self) -> Lease:
        if self.acquired is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take_lease(store: Store, console: Any, wait: bool = False) -> Lease:
    """Acquire the study's run lease, printing a takeover warning or that we wait."""

    def warn(message: str) -> None:
        console.print(f"[yellow]warning[/] {message}", highlight=False)

    lease = Lease(store, warn=warn)
    if wait:
        holder = lease.current()
        if holder is not None and holder.get("owner") != lease.owner:
            console.print("Waiting for the run lease to be released ...", highlight=False)
    return lease.acquire(wait=wait)
