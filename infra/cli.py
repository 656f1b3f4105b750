"""The ``boldcloud`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from infra.jobcli import STUDY_FILE_HELP, add_job_commands
from infra.lease import LEASE_BUSY, LeaseHeld
from infra.storage import StorageUnreachable, Store

console = Console(soft_wrap=True)


def _executor(args, study=None):
    from infra.clusters import make_executor

    return make_executor(args.cluster, workers=args.workers, retries=1, study=study)


CLUSTER_HELP = (
    "where tasks run: a cluster profile (local = Dask LocalCluster sized to this machine, "
    "inprocess = no Dask, slurm, pbs, sge, gateway, kubernetes, or a profile of your own in "
    "~/.config/boldcloud/clusters.yaml) or a scheduler address tcp://HOST:PORT. Default: the "
    "study's execution.cluster, then the user config's default, then local"
)


def _add_execution(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local Dask cluster (default: one per core); for "
        "slurm/pbs/sge/gateway/kubernetes the most jobs or workers",
    )
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="PROFILE",
        help=CLUSTER_HELP,
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="attempts after the first for a failing task (default 2)",
    )


def cmd_validate(args) -> int:
    from infra.study import load_study
    from infra.validate import dataset_issues

    study = load_study(args.study)
    issues = list(study.issues)
    if not issues:
        _, found = dataset_issues(study)
        issues += found
    errors = [i for i in issues if i.severity == "error"]
    for issue in issues:
        colour = "red" if issue.severity == "error" else "yellow"
        console.print(f"[{colour}]{issue.severity}[/] {issue}", highlight=False)
    if errors:
        console.print(f"{len(errors)} error(s) in {args.study} or its dataset.")
        return 1
    console.print(f"{args.study}: valid ({len(issues)} warning(s)); dataset {study.dataset_url}")
    return 0


def cmd_ingest(args) -> int:
    from infra.bids import discover
    from infra.runner import print_summary, run_ingest

    dataset = discover(args.bids, args.task or None, args.subject or None, args.session or None)
    for problem in dataset.problems:
        console.print(f"[yellow]skipped[/] {problem.file}: {problem.message}", highlight=False)
    store = Store(args.store)
    executor = _executor(args)
    try:
        report = run_ingest(dataset, store, executor, console, args.retries, args.force)
    finally:
        executor.close()
    code = print_summary([report], store, console)
    console.print(f"Runs are in {store.full_url('raw')}; manifest in {store.full_url('manifest')}")
    return code or (1 if dataset.problems else 0)


def _runnable_study(args):
    """The study of ``run``/``watch``, or None after printing why it cannot run."""
    from infra.study import load_study

    study = load_study(args.study, store_override=args.store)
    if study.issues:
        for issue in study.issues:
            console.print(f"[red]error[/] {issue}", highlight=False)
        return None
    if not study.store_url:
        console.print("[red]error[/] no store: add 'store:' to the study file or pass --store.")
        return None
    return study


def cmd_run(args) -> int:
    from infra.lease import take_lease
    from infra.runner import run_study
    from infra.schedule import run_new_only

    study = _runnable_study(args)
    if study is None:
        return 2
    if args.dry_run:
        from infra.dryrun import dry_run_study

        return dry_run_study(study, console)
    if args.new_only:
        start = lambda: _executor(args, study)  # noqa: E731  (only started when there is work)
        return run_new_only(study, start, console, args.retries, wait=args.wait)
    with take_lease(Store(study.store_url), console, args.wait) as lease:
        executor = _executor(args, study)
        try:
            return run_study(study, executor, console, args.retries, lease=lease)
        finally:
            executor.close()


def cmd_watch(args) -> int:
    from infra.schedule import parse_interval, watch

    try:
        every = parse_interval(args.every)
    except ValueError as err:
        console.print(f"[red]error[/] {err}", highlight=False)
        return 2
    study = _runnable_study(args)
    if study is None:
        return 2
    start = lambda: _executor(args, study)  # noqa: E731
    return watch(study, start, console, every, args.retries, args.max_cycles)


def cmd_report(args) -> int:
    from infra.bids import discover
    from infra.pipeline import PlanContext
    from infra.stages.report import copy_report, write_report
    from infra.study import load_study

    study = load_study(args.study, store_override=args.store)
    for issue in study.issues:
        console.print(f"[red]error[/] {issue}", highlight=False)
    if study.issues or not study.store_url:
        if not study.store_url:
            console.print("[red]error[/] no store: add 'store:' to the study file or pass --store.")
        return 2
    dataset = discover(
        study.dataset_url, study.tasks, study.select("subjects"), study.select("sessions")
    )
    store = Store(study.store_url)
    try:
        written = write_report(PlanContext(study, dataset, store))
    except ValueError as err:
        console.print(f"[red]error[/] {err}", highlight=False)
        return 1
    console.print(f"Report: {store.full_url(written['report'])}", highlight=False)
    if args.out:
        local = copy_report(store, written, Path(args.out))
        console.print(f"Copied to {local}", highlight=False)
    return 0


def cmd_dashboard(args) -> int:
    from infra.dashboard.app import serve
    from infra.dashboard.security import TOKEN_ENV, is_loopback, resolve_token

    store_url = args.store
    if not store_url and args.study:
        from infra.study import load_study

        store_url = load_study(args.study).store_url
    if not store_url:
        console.print("[red]error[/] no store: pass --store URL (or a study file with 'store:').")
        return 2
    try:
        token, generated = resolve_token(args.host, args.token)
    except ValueError as err:
        console.print(f"[red]error[/] {err}")
        return 2
    if generated:
        console.print(
            f"Serving on {args.host}, not a loopback address: every request needs the token "
            f"printed below (set {TOKEN_ENV} or --token to choose it)."
        )
    elif not is_loopback(args.host):
        console.print(f"Serving on {args.host}: requests need the configured token.")
    serve(
        store_url,
        host=args.host,
        port=args.port,
        token=token,
        refresh_s=args.refresh,
        dask_dashboard=args.dask_dashboard,
        announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    return 0


def cmd_simulate(args) -> int:
    from processing.simulate import simulate_study

    summary = simulate_study(
        args.out, subjects=args.subjects, sites=args.sites, seed=args.seed, size=args.size
    )
    console.print(f"Simulated BIDS dataset in {args.out}")
    console.print(summary)
    return 0


def cmd_export(args) -> int:
    from infra.ingest import export_nifti

    export_nifti(Store(args.store), args.run, args.out)
    console.print(f"Wrote {args.out}")
    return 0


def cmd_demo(args) -> int:
    from infra.demo import run_demo

    return run_demo(
        Path(args.out),
        subjects=args.subjects,
        workers=args.workers,
        console=console,
        cluster=args.cluster,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(prog="boldcloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a study file and its dataset; report every problem")
    p.add_argument("study", help=STUDY_FILE_HELP)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ingest", help="convert a BIDS dataset's runs to Zarr in a store")
    p.add_argument("bids", help="BIDS root: local path or s3://bucket/prefix")
    p.add_argument("--store", required=True, help="output store: local path or s3://bucket/prefix")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.add_argument("--subject", action="append", help="only this subject label (repeatable)")
    p.add_argument("--session", action="append", help="only this session label (repeatable)")
    p.add_argument("--force", action="store_true", help="convert even runs that are up to date")
    _add_execution(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("run", help="run a study's stages (resumable, incremental)")
    p.add_argument("study", help=STUDY_FILE_HELP)
    p.add_argument("--store", help="override the study's store URL")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="plan every stage and print task counts; run and write nothing",
    )
    p.add_argument(
        "--new-only",
        action="store_true",
        help="only subjects/sessions new or changed in the BIDS source since the last run "
        "(by content hash), then the group stages; for cron (see deploy/)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="when another run holds the study's lease, wait for it instead of exiting (code 4)",
    )
    _add_execution(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "watch", help="every interval, run the study's new or changed subjects (run --new-only)"
    )
    p.add_argument("study", help=STUDY_FILE_HELP)
    p.add_argument("--store", help="override the study's store URL")
    p.add_argument("--every", default="1h", help="interval: 30s, 15m, 1h (default 1h)")
    p.add_argument("--max-cycles", type=int, default=None, help="stop after N cycles")
    _add_execution(p)
    p.set_defaults(func=cmd_watch)

    add_job_commands(sub, _add_execution)  # submit, status [JOB], logs, cancel, driver

    p = sub.add_parser(
        "report",
        help="(re)write the study's self-contained HTML report in the store from its records",
    )
    p.add_argument("study", help=STUDY_FILE_HELP)
    p.add_argument("--store", help="override the study's store URL")
    p.add_argument("--out", help="also copy the report (and the tables it links) to this folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="serve a live web dashboard of a store's manifest")
    p.add_argument("study", nargs="?", help="study file (its store is used when no --store)")
    p.add_argument("--store", help="store URL: local path or s3://bucket/prefix")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    p.add_argument(
        "--token",
        help="access token (default: $BOLDCLOUD_DASHBOARD_TOKEN; generated when --host is not "
        "a loopback address)",
    )
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between page updates")
    p.add_argument("--dask-dashboard", help="link to the Dask dashboard of the running cluster")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("simulate", help="write a simulated reference-study BIDS dataset")
    p.add_argument("out", help="folder for the BIDS dataset (truth under derivatives/truth)")
    p.add_argument("--subjects", type=int, default=20, help="subjects to simulate (default 20)")
    p.add_argument("--sites", type=int, default=1, help="scanner sites (default 1)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)"
    )
    p.add_argument(
        "--size",
        choices=["full", "small"],
        default="full",
        help="full: 2 mm BOLD and T1w as in the study; small: 4 mm, for tests and quick "
        "end-to-end runs (default full)",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("export", help="write an ingested run back to NIfTI")
    p.add_argument("run", help="store key of the run, e.g. raw/sub-01/ses-pre/func/..._bold.zarr")
    p.add_argument("out", help="output .nii or .nii.gz")
    p.add_argument("--store", required=True, help="the store: local path or s3://bucket/prefix")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="simulate a small study and run the pipeline on it locally")
    p.add_argument(
        "--out", default="demo-output", help="folder for the study, data and store (demo-output)"
    )
    p.add_argument("--subjects", type=int, default=4, help="subjects to simulate (default 4)")
    p.add_argument(
        "--workers", type=int, default=None, help="local Dask workers (default: one per core)"
    )
    p.add_argument("--cluster", default="local", metavar="PROFILE", help=CLUSTER_HELP)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``boldcloud`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StorageUnreachable as err:
        console.print(f"[red]error[/] {err}", highlight=False)
        return 3
    except LeaseHeld as err:
        console.print(f"[red]error[/] {err}", highlight=False)
        return LEASE_BUSY
    except KeyboardInterrupt:
        console.print("Interrupted. Finished tasks are recorded; run the same command to resume.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
