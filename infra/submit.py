"""``boldcloud submit``: record a job in the store and start its driver on the cluster side.

One small launcher per kind of backend starts ``boldcloud driver JOB --store URL`` (see
:mod:`infra.driver`) where the cluster can reach it, and returns at once:

=================================== ======================================================
local, inprocess, address, gateway  a detached process on this machine (new session; it
                                    survives the submitting shell), output in
                                    ``$XDG_CACHE_HOME/boldcloud/drivers/<id>.log``
slurm, pbs, sge                     a batch job (``sbatch`` / ``qsub``) running the driver
kubernetes                          a Kubernetes Job (``kubectl create``); the rendered
                                    manifest is kept in the store either way
=================================== ======================================================

Driver settings live in the profile's optional ``driver`` mapping (``memory``, ``walltime``,
``cpus``, ``log_directory``, ``extra_directives``, ``resources``); partition/queue and account
come from the profile itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from infra.jobs import FINAL_STATES, Job, JobError, mark_final, new_job_id, new_record
from infra.launchers import BATCH_LAUNCHERS, driver_command, kubernetes_job
from infra.storage import Store


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/boldcloud/drivers`` (default ``~/.cache/...``): local driver output."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "boldcloud" / "drivers"


def launch_process(job: Job, profile: dict[str, Any]) -> dict[str, Any]:
    """Start the driver as a detached process of this machine (new session, no terminal)."""
    log = cache_dir() / f"{job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            driver_command(job, sys.executable),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return {"launcher": "process", "pid": proc.pid, "host": os.uname().nodename, "log": str(log)}


def launch_batch(job: Job, profile: dict[str, Any]) -> dict[str, Any]:
    """Submit the driver as a batch job (``sbatch``/``qsub``); returns its batch id."""
    launcher = BATCH_LAUNCHERS[profile["backend"]]
    script = launcher.script(job, profile)
    job.store.write_bytes(job.key(f"driver.{launcher.suffix}"), script.encode())
    command = launcher.submit_command
    if shutil.which(command[0]) is None:
        raise JobError(
            f"{command[0]} not found: submit --cluster {profile['profile']} from a machine of "
            f"the {profile['backend']} cluster (e.g. its login node). The batch script is in "
            f"{job.store.full_url(job.key('driver.' + launcher.suffix))}."
        )
    done = subprocess.run(command, input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise JobError(f"{' '.join(command)} refused the driver job: {done.stderr.strip()}")
    return {"launcher": profile["backend"], "batch_id": launcher.parse_id(done.stdout)}


def launch_kubernetes(job: Job, profile: dict[str, Any]) -> dict[str, Any]:
    """Create the driver's Kubernetes Job with ``kubectl`` (the manifest is kept in the store)."""
    manifest = kubernetes_job(job, profile)
    text = yaml.safe_dump(manifest, sort_keys=False)
    key = job.key("driver-job.yaml")
    job.store.write_bytes(key, text.encode())
    if shutil.which("kubectl") is None:
        raise JobError(
            f"kubectl not found: install it and point it at your cluster, or apply the "
            f"manifest yourself: kubectl create -f {job.store.full_url(key)} (download it first)."
        )
    done = subprocess.run(
        ["kubectl", "create", "-f", "-"], input=text, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise JobError(f"kubectl create refused the driver Job: {done.stderr.strip()}")
    meta = manifest["metadata"]
    return {"launcher": "kubernetes", "name": meta["name"], "namespace": meta.get("namespace")}


LAUNCHERS = {
    "slurm": launch_batch,
    "pbs": launch_batch,
    "sge": launch_batch,
    "kubernetes": launch_kubernetes,
}


def _upload_study(study: Any, job: Job) -> None:
    """The study file with dataset and store as absolute URLs (the driver runs elsewhere)."""
    doc = dict(study.doc, dataset=study.dataset_url, store=study.store_url)
    job.store.write_bytes(job.key("study.yaml"), yaml.safe_dump(doc, sort_keys=False).encode())


def _checked_study(path: str, store: str | None) -> Any:
    """Load and validate the study and its dataset; JobError listing every problem."""
    from infra.study import load_study
    from infra.validate import dataset_issues

    study = load_study(path, store_override=store)
    issues = list(study.issues) or dataset_issues(study)[1]
    errors = [str(i) for i in issues if i.severity == "error"]
    if errors:
        raise JobError(f"{path} is not valid ({len(errors)} error(s)):\n" + "\n".join(errors))
    if not study.store_url:
        raise JobError(f"{path} has no store: add 'store:' to the study file or pass --store.")
    return study


def submit_study(
    path: str,
    cluster: str | None = None,
    store: str | None = None,
    workers: int | None = None,
    stages: list[str] | None = None,
    retries: int = 2,
) -> Job:
    """Validate the study, record the job in its store, start the driver; returns the job.

    Parameters
    ----------
    path : str
        The study file.
    cluster : str, optional
        Profile or scheduler address (default: the study's, the user's, ``local``).
    store : str, optional
        Overrides the study's store.
    workers : int, optional
        Workers (local) or most jobs/workers (other backends).
    stages : list of str, optional
        Only these stages (default: the whole table).
    retries : int
        Attempts after the first for a failing task.
    """
    from infra.clusters.profiles import resolve_profile

    study = _checked_study(path, store)
    profile = resolve_profile(cluster, {"workers": workers}, study=study)
    job = Job(Store(study.store_url), new_job_id(study.name))
    extra = {"workers": workers, "stages": stages, "retries": retries}
    job.write(new_record(job.id, study.name, study.store_url, profile["profile"], **extra))
    _upload_study(study, job)
    try:
        info = LAUNCHERS.get(profile["backend"], launch_process)(job, profile)
    except Exception as err:
        mark_final(job, "failed", None, f"the driver could not be started: {err}")
        raise
    job.store.write_json(job.key("launch.json"), info)
    return job


def cancel_job(job: Job) -> list[str]:
    """Request the cancel, stop a batch job or Kubernetes Job; returns what was done (lines)."""
    record = job.read()
    if record["state"] in FINAL_STATES:
        return [f"job {job.id} is already {record['state']}: nothing to cancel."]
    job.request_cancel()
    done = [f"cancel requested in {job.store.full_url(job.key('cancel'))}"]
    info = job.launch_info()
    command = _stop_command(info)
    if command and shutil.which(command[0]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        output = (result.stdout + result.stderr).strip()
        done.append(f"{' '.join(command)}: exit code {result.returncode} {output}".rstrip())
    elif command:
        done.append(f"{command[0]} not found here: the driver stops at its next cancel check.")
    if job.read()["state"] == "submitted" and command:
        mark_final(job, "cancelled", None, "cancelled before the driver started")
    return done


def _stop_command(info: dict[str, Any]) -> list[str] | None:
    launcher = info.get("launcher")
    if launcher in BATCH_LAUNCHERS and info.get("batch_id"):
        return [*BATCH_LAUNCHERS[launcher].cancel_command, str(info["batch_id"])]
    if launcher == "kubernetes":
        namespace = ["-n", info["namespace"]] if info.get("namespace") else []
        return ["kubectl", "delete", "job", info["name"], *namespace]
    return None
