"""A real single-node SLURM (munged + slurmctld + slurmd) on 127.0.0.1 for the test session.

Started and stopped by PID, never through systemd; every file it writes (config, state, spool,
logs) lives in a temporary folder and the ports are free ones picked at start, so it cannot
clash with a SLURM that someone else runs on this machine. ``SLURM_CONF`` points ``sbatch``,
``squeue`` and ``scancel`` (and so dask-jobqueue) at it for the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")
MUNGE_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
PARTITION = "debug"


@dataclass
class Slurm:
    """What a test needs to know about the running SLURM."""

    conf: Path
    partition: str
    cpus: int
    log_dir: Path  # where job stdout/stderr go (``--output`` of the dask-jobqueue jobs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _why_not() -> str | None:
    """A reason to skip, or None when a single-node SLURM can be started here."""
    if os.geteuid() != 0:
        return "single-node SLURM needs root (munged runs as user munge, slurmd as root)"
    missing = [b for b in BINARIES if shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        return f"SLURM/munge binaries missing ({', '.join(missing)}): run `make system-deps`"
    return None


def _munge_key() -> Path:
    """The munge key, created (128 random bytes, owned by munge, mode 0400) when absent."""
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(128))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    return MUNGE_KEY


def _real_memory_mb() -> int:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    reported = int(out.split("RealMemory=")[1].split()[0])
    return int(reported * 0.8)


def slurm_conf(root: Path, socket_path: Path, cpus: int, memory_mb: int) -> str:
    """A minimal slurm.conf for one node called ``localhost`` at 127.0.0.1."""
    return f"""\
ClusterName=boldcloudtest
SlurmctldHost=localhost
SlurmctldAddr=127.0.0.1
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _wait(check, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} did not happen within {timeout:.0f} s\n{tails}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_slurm(root: Path) -> Iterator[Slurm]:
    """Start munged, slurmctld and ``slurmd -N localhost``; yield; stop them by PID."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "jobs"):
        (root / sub).mkdir(exist_ok=True)
    MUNGE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_DIR, "munge", "munge")
    MUNGE_DIR.chmod(0o755)
    tag = f"boldcloud-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    sock = MUNGE_DIR / f"{tag}.socket"
    cpus = os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, sock, cpus, _real_memory_mb()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    saved = os.environ.get("SLURM_CONF")
    try:
        munged = [
            "munged",
            "-F",
            f"--socket={sock}",
            f"--key-file={_munge_key()}",
            f"--pid-file={MUNGE_DIR / tag}.pid",
            f"--log-file={MUNGE_DIR / tag}.log",
            f"--seed-file={MUNGE_DIR / tag}.seed",
        ]
        procs.append(
            subprocess.Popen(munged, user="munge", group="munge", stderr=subprocess.DEVNULL)
        )
        _wait(sock.exists, 10, "munged socket creation", [MUNGE_DIR / f"{tag}.log"])
        logs = [root / "slurmctld.log", root / "slurmd.log"]
        procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env))
        procs.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost"], env=env))

        def idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
            )
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait(idle, 60, "node localhost idle in sinfo", logs)
        os.environ["SLURM_CONF"] = str(conf)
        yield Slurm(conf=conf, partition=PARTITION, cpus=cpus, log_dir=root / "jobs")
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        for proc in reversed(procs):
            _stop(proc)
        for suffix in (".pid", ".seed", ".log"):
            (MUNGE_DIR / f"{tag}{suffix}").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[Slurm]:
    """One real single-node SLURM for the whole test session (skips, saying why, if impossible)."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    yield from start_slurm(tmp_path_factory.mktemp("slurm"))
