"""The job commands of ``boldcloud``: submit, status [JOB], logs, cancel and the driver entry."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from rich.console import Console

from infra.jobs import Job, JobError
from infra.jobview import print_job_status, print_jobs, store_url_for, stream_log
from infra.storage import Store

STORE_HELP = "the study's store URL (local path or s3://bucket/prefix)"
STUDY_HELP = "a study file: its 'store:' is used when no --store"
STUDY_FILE_HELP = "study file (YAML or JSON, schemas/study.schema.json)"
CONSOLE = Console(soft_wrap=True)


def _job(args) -> Job:
    return Job(Store(store_url_for(args.store, args.study)), args.job)


def cmd_submit(args, console: Console) -> int:
    """Validate, record and launch; print the job id and how to follow it."""
    from infra.submit import submit_study

    started = time.perf_counter()
    stages = [s for group in args.stage or [] for s in group.split(",") if s] or None
    job = submit_study(args.study, args.cluster, args.store, args.workers, stages, args.retries)
    seconds = time.perf_counter() - started
    console.print(
        f"Submitted job {job.id} to {job.read()['cluster']} in {seconds:.1f} s. Follow it with\n"
        f"  boldcloud status {job.id} --store {job.store.url}\n"
        f"  boldcloud logs {job.id} --store {job.store.url} --follow",
        highlight=False,
    )
    print(job.id)  # last line: the id alone, for scripts
    return 0


def cmd_status(args, console: Console) -> int:
    """``status JOB``: the job and its progress; ``status``: the store's overview and jobs."""
    from infra.dashboard.terminal import print_status

    if args.job:
        return print_job_status(_job(args), console)
    store = Store(store_url_for(args.store, args.study))
    code = print_status(store, console)
    print_jobs(store, console)
    return code


def cmd_logs(args, console: Console) -> int:
    """Print the driver's log (and follow it)."""
    return stream_log(_job(args), follow=args.follow)


def cmd_cancel(args, console: Console) -> int:
    """Request the cancel and stop the batch job, if any."""
    from infra.submit import cancel_job

    for line in cancel_job(_job(args)):
        console.print(line, highlight=False)
    return 0


def cmd_driver(args, console: Console) -> int:
    """Run a submitted job (started by ``submit`` on the cluster side)."""
    from infra.driver import run_driver

    return run_driver(args.store, args.job)


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--study", help=STUDY_HELP)


JOB_HELP = "job id printed by 'boldcloud submit'"


def add_job_commands(sub, add_execution: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register submit, status, logs, cancel and driver on the ``boldcloud`` subparsers."""
    p = sub.add_parser(
        "submit",
        help="validate a study, record it as a job in its store and start a driver on the "
        "cluster side; prints the job id at once",
    )
    p.add_argument("study", help=STUDY_FILE_HELP)
    p.add_argument("--store", help="override the study's store URL")
    p.add_argument(
        "--stage", action="append", help="only these stages (repeatable or comma-separated)"
    )
    add_execution(p)
    p.set_defaults(func=_command(cmd_submit))

    p = sub.add_parser(
        "status",
        help="a submitted job (status JOB) or a store's overview: stages x states, progress, "
        "failures, recent jobs",
    )
    p.add_argument("job", nargs="?", help=JOB_HELP)
    _store_options(p)
    p.set_defaults(func=_command(cmd_status))

    p = sub.add_parser("logs", help="print a submitted job's driver log")
    p.add_argument("job", help=JOB_HELP)
    _store_options(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=_command(cmd_logs))

    p = sub.add_parser("cancel", help="cancel a submitted job (finished tasks stay recorded)")
    p.add_argument("job", help=JOB_HELP)
    _store_options(p)
    p.set_defaults(func=_command(cmd_cancel))

    p = sub.add_parser("driver", help="run a submitted job (what 'submit' starts; internal)")
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("--store", required=True, help=STORE_HELP)
    p.set_defaults(func=_command(cmd_driver))


def _command(fn: Callable[[argparse.Namespace, Console], int]) -> Callable[..., int]:
    """``fn`` with the shared console; a job or input error becomes a message and exit 2."""

    def command(args: argparse.Namespace) -> int:
        try:
            return fn(args, CONSOLE)
        except (JobError, ValueError) as err:
            CONSOLE.print(f"[red]error[/] {err}", highlight=False)
            return 2

    return command
