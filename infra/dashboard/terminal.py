"""``boldcloud status``: the dashboard's overview in the terminal (rich table and progress bars)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from infra.dashboard.cache import ManifestCache
from infra.dashboard.views import NOT_APPLICABLE, format_duration, overview
from infra.manifest import STATES
from infra.storage import Store

STYLES = {"running": "blue", "done": "green", "failed": "red", "excluded": "yellow"}


def status_table(data: dict[str, Any], title: str | None, bars: bool = True) -> Table:
    """Stages x states (task counts), subjects finished per stage and a bar per stage."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("stage", no_wrap=True)
    for state in STATES:
        table.add_column(state, justify="right", style=STYLES.get(state, ""))
    table.add_column("subjects", justify="right", min_width=8)
    if bars:
        table.add_column("", min_width=12, no_wrap=True)
    for j, stage in enumerate(data["stages"]):
        codes = [row["cells"][j] for row in data["rows"] if row["cells"][j] != NOT_APPLICABLE]
        finished = sum(code in "DX" for code in codes)
        counts = data["counts"][stage]
        cells = [
            stage,
            *(str(counts[s]) if counts[s] else "[dim]0[/]" for s in STATES),
            f"{finished}/{len(codes)}",
        ]
        if bars:
            cells.append(ProgressBar(total=max(len(codes), 1), completed=finished, width=12))
        table.add_row(*cells)
    return table


def progress_line(data: dict[str, Any]) -> Table:
    """The overall progress bar with cells finished, ETA and throughput."""
    p = data["progress"]
    bar = ProgressBar(total=max(p["cells"], 1), completed=p["complete"], width=30)
    text = Text(
        f"{p['complete']}/{p['cells']} subject x stage cells finished ({100 * p['fraction']:.1f} %)"
    )
    if p["failed_cells"]:
        text.append(f", {p['failed_cells']} with failures", style="red")
    if p["active"]:
        text.append(
            f" · {p['running']} running · {p['throughput_per_min']:.1f} tasks/min"
            f" · ETA {format_duration(p['eta_s'])}"
        )
    else:
        text.append(" · idle (no task running or finished in the last 2 min)", style="dim")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    grid.add_row(bar, text)
    return grid


def print_status(store: Store, console: Console, failures: int = 20) -> int:
    """Print the overview of ``store``'s manifest; returns the exit code (always 0).

    Parameters
    ----------
    store : Store
        The study's store.
    console : rich.console.Console
        Where to print.
    failures : int
        Failed tasks listed (the newest first); the dashboard's failures page has all.
    """
    tasks = ManifestCache(store).tasks(max_age_s=0)
    if not tasks:
        console.print(f"No tasks recorded in {store.url} yet.")
        return 0
    data = overview(tasks, failures=failures)
    title = f"{store.url}: {data['tasks']} tasks, {data['subjects']} subjects"
    console.print(title, highlight=False, soft_wrap=True)  # a long store URL never wraps
    console.print(status_table(data, None, bars=console.width >= 100))
    console.print(progress_line(data))
    for failure in data["failures"]:
        console.print(
            f"[red]failed[/] {failure['task']} ({failure['attempts']} attempt(s)): "
            f"{failure['error']}",
            highlight=False,
        )
    more = data["failed_total"] - len(data["failures"])
    if more > 0:
        console.print(f"... and {more} more failed: boldcloud dashboard --store {store.url}")
    return 0
