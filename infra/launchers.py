"""What starts a job's driver: its command line, batch scripts (SLURM, PBS, SGE) and the
Kubernetes Job manifest. Pure rendering (no process is started here), so it is testable
offline; :mod:`infra.submit` runs the results.
"""

from __future__ import annotations

import re
import shlex
import string
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from infra.jobs import Job

DRIVER_DEFAULTS = {
    "cpus": 1,
    "memory": "2G",
    "walltime": "24:00:00",
    "log_directory": None,  # batch job output folder (default: the submit directory)
    "extra_directives": [],  # further "#SBATCH ..." / "#PBS ..." / "#$ ..." lines
    "resources": {  # Kubernetes container resources
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    },
}


def driver_settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's ``driver`` mapping over :data:`DRIVER_DEFAULTS`."""
    given = profile.get("driver") or {}
    if not isinstance(given, dict):
        raise ValueError(
            f"cluster profile {profile.get('profile')!r}: 'driver' must be a mapping such as "
            f"{{memory: 2G, walltime: '24:00:00'}}, not {given!r}."
        )
    return {**DRIVER_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}


def megabytes(value: str | int) -> int:
    """A memory size (``2G``, ``4GB``, ``512MiB``, ``1500M``; a bare number is MB) in MB."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", str(value).upper())
    if not match:
        raise ValueError(f"driver memory {value!r}: write it like 2G, 4GB or 1500M.")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
    return max(1, int(float(match.group(1)) * scale))


def driver_command(job: Job, python: str | None = None) -> list[str]:
    """``python -m infra.cli driver JOB --store URL`` (``boldcloud driver`` without ``python``)."""
    tail = ["driver", job.id, "--store", job.store.url]
    return [python, "-m", "infra.cli", *tail] if python else ["boldcloud", *tail]


@dataclass(frozen=True)
class BatchLauncher:
    """One batch scheduler: its directives, submit and cancel commands, job id parsing."""

    prefix: str  # directive prefix, e.g. "#SBATCH"
    suffix: str  # file suffix of the stored script
    submit_command: tuple[str, ...]
    cancel_command: tuple[str, ...]
    templates: ClassVar[dict[str, tuple[str, ...]]] = {
        "#SBATCH": (
            "--job-name={name}",
            "--cpus-per-task={cpus}",
            "--mem={memory}M",
            "--time={walltime}",
            "--partition={queue}",
            "--account={account}",
            "--output={output}/boldcloud-driver-%j.log",
        ),
        "#PBS": (
            "-N {name}",
            "-l select=1:ncpus={cpus}:mem={memory}mb",
            "-l walltime={walltime}",
            "-q {queue}",
            "-A {account}",
            "-j oe -o {output}",
            "-V",  # pass the submit environment (sbatch does by default)
        ),
        "#$": (
            "-N {name}",
            "-pe smp {cpus}",
            "-l h_vmem={memory}M",
            "-l h_rt={walltime}",
            "-q {queue}",
            "-P {account}",
            "-j y -o {output}",
            "-V",
        ),
    }

    def directives(self, job: Job, profile: dict[str, Any]) -> list[str]:
        """The scheduler directives of the driver job (a directive whose value is unset is
        left out)."""
        settings = driver_settings(profile)
        values = {
            "name": f"boldcloud-{job.id}"[:64],
            "cpus": settings["cpus"],
            "memory": megabytes(settings["memory"]),
            "walltime": settings["walltime"],
            "queue": profile.get("queue"),
            "account": profile.get("account") or profile.get("project"),
            "output": settings["log_directory"],
        }
        lines = []
        for template in self.templates[self.prefix]:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
            if all(values[f] not in (None, "") for f in fields):
                lines.append(f"{self.prefix} {template.format_map(values)}")
        return lines + [f"{self.prefix} {d}" for d in settings["extra_directives"]]

    def script(self, job: Job, profile: dict[str, Any]) -> str:
        """The whole batch script: directives, then exec of the driver."""
        python = profile.get("python") or sys.executable
        command = shlex.join(driver_command(job, python))
        body = [
            "#!/usr/bin/env bash",
            f"# boldcloud driver of job {job.id} (written by 'boldcloud submit')",
            *self.directives(job, profile),
            "set -euo pipefail",
            'cd "${PBS_O_WORKDIR:-${SGE_O_WORKDIR:-.}}"' if self.prefix != "#SBATCH" else "",
            f"exec {command}",
        ]
        return "\n".join(line for line in body if line) + "\n"

    @staticmethod
    def parse_id(output: str) -> str:
        """The job id from the submit command's output (``sbatch --parsable``, ``qsub``)."""
        words = output.strip().split()
        if not words:
            raise ValueError("the batch scheduler printed no job id")
        if "job" in words and "submitted" in words:  # SGE: Your job 123 ("name") has been ...
            return words[words.index("job") + 1]
        return words[-1].split(";")[0]  # sbatch --parsable: "123" or "123;cluster"


BATCH_LAUNCHERS: dict[str, BatchLauncher] = {
    "slurm": BatchLauncher("#SBATCH", "sbatch", ("sbatch", "--parsable"), ("scancel",)),
    "pbs": BatchLauncher("#PBS", "pbs", ("qsub",), ("qdel",)),
    "sge": BatchLauncher("#$", "sge", ("qsub",), ("qdel",)),
}


def kubernetes_job(job: Job, profile: dict[str, Any]) -> dict[str, Any]:
    """The driver's Kubernetes Job (shaped like ``deploy/kubernetes/driver-job.yaml``).

    The container runs ``boldcloud driver``; S3 settings and credentials reach it as in the
    deploy files: the ``boldcloud-settings`` ConfigMap and the profile's ``env_from_secrets``
    (never values in the manifest).
    """
    labels = {"app.kubernetes.io/part-of": "boldcloud", "boldcloud/job": job.id}
    env_from = [{"configMapRef": {"name": "boldcloud-settings", "optional": True}}]
    env_from += [
        {"secretRef": {"name": name, "optional": True}}
        for name in profile.get("env_from_secrets") or []
    ]
    container = {
        "name": "driver",
        "image": profile.get("image") or "boldcloud",
        "command": driver_command(job),
        "envFrom": env_from,
        "resources": driver_settings(profile)["resources"],
    }
    env = profile.get("env") or {}
    if env:
        container["env"] = [{"name": k, "value": str(v)} for k, v in sorted(env.items())]
    pod = {"restartPolicy": "Never", "containers": [container]}
    if profile.get("service_account"):
        pod["serviceAccountName"] = profile["service_account"]
    metadata: dict[str, Any] = {"name": f"boldcloud-driver-{job.id}"[:63], "labels": labels}
    if profile.get("namespace"):
        metadata["namespace"] = profile["namespace"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,  # a failed driver is resubmitted by the user (it resumes)
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
