"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser download): a real run watched live, a planted failure, the token, a store on S3.

Screenshots go to each test's tmp_path; with ``BOLDCLOUD_UPDATE_DOCS_IMG=1`` the overview of the
larger study is also copied to docs/img/dashboard.png (the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from infra.dashboard.app import BackgroundServer, create_app
from infra.dashboard.security import COOKIE
from infra.storage import Store

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (`make system-deps` installs it)",
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs Playwright for Python (dev extras: pip install -e .[dev])"
)
expect = sync_api.expect

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-token-0123"
MOTION_REF = 'td[data-subject="01"][data-stage="motion_reference"]'
INGEST = 'td[data-subject="01"][data-stage="ingest"]'


@pytest.fixture(scope="module")
def browser():
    # launch() gives every browser a fresh temporary profile (user-data dir), removed on close.
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


class LiveRun:
    """The real pipeline (ingest, motion_reference) on a simulated study, in a thread."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="live-run")
        self._lock = threading.Lock()

    def _run(self) -> None:
        from infra.executors import LocalExecutor
        from infra.runner import run_pipeline

        try:
            stages = ["ingest", "motion_reference"]
            run_pipeline(self.ctx, LocalExecutor(), Console(quiet=True), stages=stages)
        except BaseException as err:  # re-raised in the test thread by join()
            self.error = err

    def start(self) -> None:
        with self._lock:
            if not self.thread.is_alive() and self.thread.ident is None:
                self.thread.start()

    def join(self, timeout_s: float = 180) -> None:
        self.start()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the simulated run did not finish"
        if self.error:
            raise self.error


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One simulated subject (small grid, 4 runs) with ses-pre run-2 truncated (a corrupt run),
    its store empty, and a dashboard already serving that store."""
    from infra.bids import discover
    from infra.demo import write_demo_study
    from infra.pipeline import PlanContext
    from infra.study import load_study
    from processing.simulate import simulate_study

    out = tmp_path_factory.mktemp("live")
    simulate_study(out / "bids", subjects=1, seed=0, size="small")
    bold = next((out / "bids").rglob("sub-01_ses-pre_task-cuff_run-2_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[: bold.stat().st_size // 2])
    study = load_study(str(write_demo_study(out)))
    store = Store(study.store_url)
    store.write_bytes("study.yaml", Path(study.path).read_bytes())  # as `boldcloud run` does
    ctx = PlanContext(study, discover(study.dataset_url, study.tasks), store)
    run = LiveRun(ctx)
    app = create_app(store.url, refresh_s=0.4, min_interval_s=0.2)
    with BackgroundServer(app) as server:
        yield SimpleNamespace(server=server, run=run, store=store)
        run.join()


def api(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def grid_states(page) -> dict[tuple[str, str], str]:
    """(subject, stage) -> state of every grid cell, as the page shows it."""
    cells = page.eval_on_selector_all(
        "#grid td.cell",
        "tds => tds.map(td => [td.dataset.subject, td.dataset.stage, td.dataset.state])",
    )
    return {(s, stage): state for s, stage, state in cells}


def test_grid_follows_a_real_run_without_reload(live, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live.server.url + "/")
    expect(page.locator("#empty")).to_be_visible()
    page.evaluate("window.__noReload = 'still the same page'")
    # Record every state the motion_reference cell shows, as the page repaints it.
    page.evaluate(
        """sel => { window.__seen = []; setInterval(() => {
              const td = document.querySelector(sel); const s = td && td.dataset.state;
              if (s && window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s);
           }, 50); }""",
        MOTION_REF,
    )
    live.run.start()
    state = f"document.querySelector('{MOTION_REF}')?.dataset.state"
    page.wait_for_function(f"{state} === 'pending'", timeout=60_000)
    page.screenshot(path=str(tmp_path / "overview-pending.png"), full_page=True)
    page.wait_for_function(f"{state} === 'done'", timeout=120_000)
    page.screenshot(path=str(tmp_path / "overview-done.png"), full_page=True)
    seen = page.evaluate("window.__seen")
    assert seen[0] == "pending" and seen[-1] == "done", seen
    assert page.evaluate("window.__noReload") == "still the same page"
    assert int(page.locator("#overview").get_attribute("data-polls")) >= 3
    # Three runs ingested, the truncated one failed: its error is on the overview, live.
    expect(page.locator(INGEST)).to_have_attribute("data-state", "failed")
    expect(page.locator(INGEST)).to_have_text("3/4")
    expect(page.locator(MOTION_REF)).to_have_text("3/3")
    failure = page.locator('#failures .failure[data-task="ingest/sub-01_ses-pre_task-cuff_run-2"]')
    expect(failure.locator(".error")).to_contain_text(re.compile("truncated|corrupt"))
    assert (tmp_path / "overview-done.png").stat().st_size > 10_000


def test_failures_page_shows_the_planted_error(live, browser, tmp_path):
    live.run.join()
    page = browser.new_page()
    page.goto(live.server.url + "/failures")
    box = page.locator('.failure[data-task="ingest/sub-01_ses-pre_task-cuff_run-2"]')
    expect(box.locator(".error")).to_contain_text(re.compile("truncated|corrupt"))
    expect(box.locator(".retry")).to_have_text(
        f"boldcloud ingest bids --store {live.store.url} --subject 01"
    )
    box.locator("summary").click()
    expect(box.locator("pre.traceback")).to_contain_text("Traceback")
    page.screenshot(path=str(tmp_path / "failures.png"), full_page=True)
    # The subject page lists the same failure and the runs that went through.
    page.goto(live.server.url + "/subject/01")
    expect(page.locator(".failure .error")).to_contain_text(re.compile("truncated|corrupt"))
    expect(page.locator("section.run")).to_have_count(4)
    expect(page.locator('section.run[data-state="done"]')).to_have_count(3)


def test_requests_without_the_token_are_refused(live, browser):
    with BackgroundServer(create_app(live.store.url, token=TOKEN, refresh_s=0.4)) as server:
        context = browser.new_context()
        page = context.new_page()
        response = page.goto(server.url + "/")
        assert response.status == 401
        assert "requires its token" in page.content()
        assert page.goto(server.url + "/api/overview").status == 401
        response = page.goto(f"{server.url}/?token={TOKEN}")
        assert response.status == 200 and "token=" not in page.url
        assert any(c["name"] == COOKIE and c["httpOnly"] for c in context.cookies())
        # Live updates keep working with the cookie alone.
        page.wait_for_function(
            "parseInt(document.getElementById('overview').dataset.polls) >= 2", timeout=20_000
        )
        expect(page.locator("#live-status")).to_have_text("live")
        assert page.goto(server.url + "/failures").status == 200
        context.close()
        other = browser.new_context()  # another browser without the cookie: refused again
        assert other.new_page().goto(server.url + "/failures").status == 401
        other.close()


@pytest.mark.s3
def test_same_study_read_from_s3(live, browser, s3_server, tmp_path):
    from infra.storage import filesystem

    live.run.join()
    fs, _ = filesystem("s3://dash-browser")
    if not fs.exists("dash-browser"):
        fs.mkdir("dash-browser")
    fs.put(live.store.root + "/manifest", "dash-browser/study/manifest", recursive=True)
    fs.put(live.store.root + "/study.yaml", "dash-browser/study/study.yaml")
    local_page = browser.new_page()
    local_page.goto(live.server.url + "/")
    expect(local_page.locator(MOTION_REF)).to_have_attribute("data-state", "done")
    with BackgroundServer(create_app("s3://dash-browser/study", refresh_s=0.5)) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url + "/")
        expect(page.locator(".store")).to_have_text("s3://dash-browser/study")
        expect(page.locator(MOTION_REF)).to_have_attribute("data-state", "done")
        assert grid_states(page) == grid_states(local_page)
        expect(page.locator("#n-failed")).to_have_text("1")
        page.screenshot(path=str(tmp_path / "overview-s3.png"), full_page=True)


def _larger_study(root: Path) -> Store:
    """24 subjects part-way through the stage table: done, running, failed, excluded cells."""
    from test_dashboard import put

    from processing.stages import STAGES

    store = Store(str(root))
    names = [s.name for s in STAGES]
    for i in range(1, 25):
        reached = max(0, len(names) - i // 2 - 1)  # earlier subjects are further along
        for j, stage in enumerate(names[: reached + 1]):
            for run in (1, 2):
                unit = f"sub-{i:02d}_ses-pre_task-cuff_run-{run}"
                if i == 7 and run == 2 and j >= 4:
                    put(store, stage, unit, "excluded", reason="run excluded by motion: 2.4 mm")
                elif i in (5, 18) and j == reached and run == 1:
                    put(store, stage, unit, "failed", error="MemoryError: worker exceeded 95%")
                else:
                    put(store, stage, unit, "running" if j == reached else "done")
    return store


def test_overview_of_a_larger_study(browser, tmp_path):
    store = _larger_study(tmp_path / "store")
    with BackgroundServer(create_app(store.url, refresh_s=1.0)) as server:
        data = api(server.url + "/api/overview")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + "/")
        shown = grid_states(page)
        codes = {"P": "pending", "R": "running", "D": "done", "F": "failed", "X": "excluded"}
        codes["-"] = "na"  # group stages have no per-subject cell
        expected = {
            (row["subject"], stage): codes[code]
            for row in data["rows"]
            for stage, code in zip(data["stages"], row["cells"], strict=True)
        }
        assert shown == expected and len(shown) == 24 * len(data["stages"])
        assert {"pending", "running", "done", "failed"} <= set(shown.values())
        expect(page.locator("#n-subjects")).to_have_text("24")
        width = page.eval_on_selector("#bar-done", "el => el.style.width")
        assert float(width.rstrip("%")) == pytest.approx(100 * data["progress"]["fraction"], 0.01)
        time.sleep(0.3)  # let the progress bar's CSS transition settle for the picture
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot))
        if os.environ.get("BOLDCLOUD_UPDATE_DOCS_IMG") == "1":
            shutil.copyfile(shot, REPO / "docs" / "img" / "dashboard.png")
