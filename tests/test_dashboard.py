"""The dashboard without a browser: record cache, aggregation, access control, pages over real
HTTP (uvicorn on 127.0.0.1), ``boldcloud status``, and a store on the S3 test server."""

from __future__ import annotations

import http.client
import io
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from rich.console import Console

from infra.dashboard.app import BackgroundServer, create_app
from infra.dashboard.cache import ManifestCache, Task
from infra.dashboard.pages import record_cluster, safe_key
from infra.dashboard.security import COOKIE, is_loopback, resolve_token
from infra.dashboard.views import cell_state, overview
from infra.manifest import Manifest, TaskRecord
from infra.storage import Store
from processing.stages import STAGES

THRESHOLD = 0.9
EXCLUDED_REASON = "TR-to-TR RMS displacement 3.10 mm at volume 12 exceeds 0.9 mm"
FAILED_ERROR = "ValueError: sub-03_ses-pre_task-demo_run-2_bold.nii.gz is truncated (corrupt gzip)"


# ---------------------------------------------------------------- a hand-made study store
def png_bytes(colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def put(store: Store, stage: str, unit: str, state: str, **fields) -> TaskRecord:
    """Write a record like the runner does (subject and session from the unit's entities)."""
    ents = dict(part.split("-", 1) for part in unit.split("_") if "-" in part)
    now = time.time()
    rec = TaskRecord(
        stage=stage,
        unit=unit,
        state=state,
        attempts=1,
        subject=ents.get("sub"),
        session=ents.get("ses"),
        worker="node-a" if ents.get("sub", "") < "02" else "node-b",
        started=now - 20,
    )
    if state != "running":
        rec.finished, rec.duration_s = now - 10, 10.0
    for name, value in fields.items():
        setattr(rec, name, value)
    Manifest(store).put(rec)
    return rec


def make_store(root: Path) -> Store:
    """Subjects 01, 02, 03 and 10; two runs each. sub-01 run-1 has QC files, sub-02 run-2 is
    excluded for motion, sub-03 run-2 failed to ingest, sub-10 is still running."""
    store = Store(str(root))
    subjects = ("01", "02", "03", "10")
    runs = [f"sub-{s}_ses-pre_task-demo_run-{r}" for s in subjects for r in (1, 2)]
    deriv = "derivatives/boldcloud/sub-01/ses-pre/func/sub-01_ses-pre_task-demo_run-1"
    fd = [0.0, 0.1, 0.2, 1.4, 0.1, 0.0]
    rms = [0.0, 0.1, 0.3, 1.2, 0.2, 0.1]
    tsv = "framewise_displacement\trmsd\n" + "".join(
        f"{'n/a' if i == 0 else a}\t{b}\n" for i, (a, b) in enumerate(zip(fd, rms, strict=True))
    )
    store.write_bytes(f"{deriv}_desc-confounds_timeseries.tsv", tsv.encode())
    store.write_bytes(f"{deriv}_desc-qc_motion.png", png_bytes("blue"))
    store.write_bytes(f"{deriv}_desc-qc_mask.png", png_bytes("green"))
    for run in runs:
        if run == "sub-03_ses-pre_task-demo_run-2":
            put(store, "ingest", run, "failed", error=FAILED_ERROR, traceback="Traceback: ...")
            continue
        if run.startswith("sub-10"):
            put(store, "ingest", run, "running")
            continue
        put(store, "ingest", run, "done")
        outputs, reason = {"excluded": False, "confounds": None}, None
        if run == "sub-01_ses-pre_task-demo_run-1":
            outputs.update(
                confounds=f"{deriv}_desc-confounds_timeseries.tsv",
                plot=f"{deriv}_desc-qc_motion.png",
                max_fd_mm=1.4,
            )
        if run == "sub-02_ses-pre_task-demo_run-2":
            outputs["excluded"], reason = True, EXCLUDED_REASON
        params = {"preprocessing.motion_exclusion_mm": THRESHOLD}
        put(store, "motion", run, "done", outputs=outputs, reason=reason, params=params)
        if reason:
            for chunk in (0, 1):
                put(store, "preprocess", f"{run}_chunk-{chunk}", "excluded", reason=reason)
            put(store, "filter", run, "excluded", reason=reason)
        else:
            overlay = {"overlay": f"{deriv}_desc-qc_mask.png"} if run.startswith("sub-01") else {}
            overlay["tsnr_median"] = 61.25
            for chunk in (0, 1):
                put(store, "preprocess", f"{run}_chunk-{chunk}", "done")
            put(store, "filter", run, "done", outputs=overlay)
    return store


@pytest.fixture
def study_store(tmp_path) -> Store:
    return make_store(tmp_path / "store")


@pytest.fixture
def server(study_store):
    with BackgroundServer(create_app(study_store.url, min_interval_s=0.0)) as srv:
        yield srv


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET that does not follow redirects: status, lower-cased headers, body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


# ---------------------------------------------------------------- cache
def test_cache_rereads_only_changed_records(study_store):
    cache = ManifestCache(study_store, min_interval_s=0.0)
    first = cache.refresh()
    n = len(study_store.list("manifest/tasks", ".json"))
    assert first.listed == first.read == n and n > 20
    generation = cache.generation
    again = cache.refresh()
    assert (again.read, again.removed, cache.generation) == (0, 0, generation)
    # A rewritten record (new inode and mtime) and a removed one are noticed.
    put(study_store, "ingest", "sub-10_ses-pre_task-demo_run-1", "done")
    study_store.remove("manifest/tasks/ingest/sub-10_ses-pre_task-demo_run-2.json")
    third = cache.refresh()
    assert (third.read, third.removed) == (1, 1) and cache.generation == generation + 1
    tasks = {t.task_id: t for t in cache.tasks()}
    assert tasks["ingest/sub-10_ses-pre_task-demo_run-1"].state == "done"
    assert "ingest/sub-10_ses-pre_task-demo_run-2" not in tasks
    full = cache.full([tasks["motion/sub-02_ses-pre_task-demo_run-2"]])
    assert full[0].outputs["excluded"] is True and full[0].params[
        "preprocessing.motion_exclusion_mm"
    ] == pytest.approx(THRESHOLD)


def test_local_cache_skips_folders_without_new_writes(study_store, monkeypatch):
    import os

    cache = ManifestCache(study_store, min_interval_s=0.0)
    folder = Path(study_store.path("manifest/tasks/motion"))
    old = time.time() - 60
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (old, old))
    cache.refresh()  # walks everything; the motion folder is now known to be old
    scanned = []
    original = cache._scan
    monkeypatch.setattr(cache, "_scan", lambda prefix: scanned.append(prefix) or original(prefix))
    cache.refresh()
    assert "manifest/tasks/motion" not in scanned and "manifest/tasks/ingest" in scanned
    put(study_store, "motion", "sub-10_ses-pre_task-demo_run-1", "done")  # renamed into motion/
    stats = cache.refresh()
    assert "manifest/tasks/motion" in scanned and stats.read == 1
    assert "motion/sub-10_ses-pre_task-demo_run-1" in {t.task_id for t in cache.tasks()}


def test_cache_throttles_listing(study_store):
    cache = ManifestCache(study_store, min_interval_s=60.0)
    cache.tasks()
    before = len(cache.tasks())
    put(study_store, "ingest", "sub-11_ses-pre_task-demo_run-1", "done")
    assert len(cache.tasks()) == before  # within the interval: the snapshot is reused
    assert len(cache.tasks(max_age_s=0)) == before + 1


# ---------------------------------------------------------------- aggregation
def task(stage, subject, state, unit=None, finished=None, duration=None):
    unit = unit or f"sub-{subject}_run-1"
    return Task(
        key="",
        stage=stage,
        unit=unit,
        state=state,
        subject=subject,
        finished=finished,
        duration_s=duration,
        started=None if finished is None else finished - (duration or 0),
    )


def test_cell_state_priorities():
    # counts in STATES order: pending, running, done, failed, excluded
    assert cell_state([0, 0, 3, 1, 0]) == "failed"
    assert cell_state([0, 1, 3, 0, 0]) == "running"
    assert cell_state([0, 0, 3, 0, 1]) == "done"
    assert cell_state([0, 0, 0, 0, 2]) == "excluded"
    assert cell_state([0, 0, 0, 0, 0]) == "pending"
    assert cell_state([1, 0, 2, 0, 0]) == "pending"


def test_overview_grid_counts_and_progress(study_store):
    data = overview(ManifestCache(study_store).tasks(), stages=["ingest", "motion", "filter"])
    rows = {r["subject"]: r for r in data["rows"]}
    assert [r["subject"] for r in data["rows"]] == ["01", "02", "03", "10"]  # natural order
    assert rows["01"]["cells"] == "DDD"
    assert rows["02"]["cells"] == "DDD"  # one run excluded, the other done: done
    assert rows["02"]["counts"][2] == [2, 2]
    assert rows["03"]["cells"] == "FDD"
    assert rows["10"]["cells"] == "RPP"  # motion and filter not planned yet: pending
    assert data["counts"]["ingest"] == {
        "pending": 0,
        "running": 2,
        "done": 5,
        "failed": 1,
        "excluded": 0,
    }
    p = data["progress"]
    assert (p["cells"], p["complete"], p["failed_cells"]) == (12, 8, 1)
    assert p["fraction"] == pytest.approx(8 / 12)
    assert data["failed_total"] == 1 and data["failures"][0]["error"] == FAILED_ERROR


def test_eta_from_recent_throughput():
    now = 10_000.0
    # 20 subjects x 1 stage; 10 done in the last 100 s, 10 s each: 1 task-second per second.
    done = [task("s", f"{i:02d}", "done", finished=now - 10 * i, duration=10.0) for i in range(10)]
    running = [task("s", f"{i:02d}", "running") for i in range(10, 12)]
    pending_subjects = [
        task("t", f"{i:02d}", "done", finished=now - 5, duration=1.0) for i in (12,)
    ]
    data = overview(done + running + pending_subjects, now=now, stages=["s", "t"])
    p = data["progress"]
    assert p["active"] and p["running"] == 2
    # Remaining for stage s: 2 running (half done) + 1 empty cell (subject 12): 2*5 + 10 = 20 s of
    # work; stage t: 12 empty cells x 1 s = 12 s. Busy time in the window: 100 + 1 = 101 s over
    # the 100 s since the first of them started: parallelism 1.01.
    assert p["eta_s"] == pytest.approx(32 / 1.01, rel=0.01)
    idle = overview(done, now=now + 3600, stages=["s"])["progress"]
    assert not idle["active"] and idle["eta_s"] is None


# ---------------------------------------------------------------- access control
def test_token_resolution():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert resolve_token("127.0.0.1", None, {}) == (None, False)
    token, generated = resolve_token("0.0.0.0", None, {})
    assert generated and len(token) >= 24
    assert resolve_token("0.0.0.0", None, {"BOLDCLOUD_DASHBOARD_TOKEN": "from-env-123"}) == (
        "from-env-123",
        False,
    )
    assert resolve_token("0.0.0.0", "cli-token-1", {"BOLDCLOUD_DASHBOARD_TOKEN": "x" * 9})[0] == (
        "cli-token-1"
    )
    with pytest.raises(ValueError, match="letters, digits"):
        resolve_token("0.0.0.0", "bad token; x", {})


def test_every_request_without_the_token_gets_401(study_store):
    token = "s3cret-token-for-tests"
    with BackgroundServer(create_app(study_store.url, token=token)) as srv:
        for path in ("/", "/api/overview", "/failures", "/static/overview.js", "/subject/01"):
            status, headers, body = get(srv.url + path)
            assert status == 401 and b"token" in body, path
            assert headers["www-authenticate"].startswith("Bearer")
        assert get(srv.url + "/api/overview", {"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = get(srv.url + "/api/overview", {"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(body)["tasks"] > 0
        # The printed link: ?token= sets an HttpOnly cookie and redirects without the token.
        status, headers, _ = get(f"{srv.url}/subject/01?token={token}&x=1")
        assert status == 303 and headers["location"] == "/subject/01?x=1"
        assert f"{COOKIE}={token}" in headers["set-cookie"]
        assert "HttpOnly" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert get(srv.url + "/failures", {"Cookie": cookie})[0] == 200
        assert get(srv.url + "/failures", {"Cookie": f"{COOKIE}=nope"})[0] == 401


def test_dashboard_command_generates_a_token_off_loopback(study_store, monkeypatch, capsys):
    from infra import cli
    from infra.dashboard import app

    seen = {}
    monkeypatch.delenv("BOLDCLOUD_DASHBOARD_TOKEN", raising=False)
    monkeypatch.setattr(app, "serve", lambda url, **kw: seen.update(url=url, **kw))
    assert cli.main(["dashboard", "--store", study_store.url, "--host", "0.0.0.0"]) == 0
    assert seen["url"] == study_store.url and seen["host"] == "0.0.0.0"
    assert seen["token"] and len(seen["token"]) >= 24
    seen.clear()
    assert cli.main(["dashboard", "--store", study_store.url]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8050 and seen["token"] is None
    assert cli.main(["dashboard", "--store", study_store.url, "--token", "a b"]) == 2


# ---------------------------------------------------------------- pages over HTTP
def test_overview_api_and_incremental_poll(server, study_store):
    status, headers, body = get(server.url + "/api/overview")
    data = json.loads(body)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert {r["subject"] for r in data["rows"]} == {"01", "02", "03", "10"}
    since = data["generation"]
    unchanged = json.loads(get(f"{server.url}/api/overview?since={since}")[2])
    assert unchanged["unchanged"] is True and "rows" not in unchanged
    put(study_store, "ingest", "sub-10_ses-pre_task-demo_run-1", "done")
    changed = json.loads(get(f"{server.url}/api/overview?since={since}")[2])
    assert changed["generation"] > since and changed["counts"]["ingest"]["done"] == 6
    page = get(server.url + "/")[2].decode()
    assert 'id="grid"' in page and "/static/overview.js" in page and "tojson" not in page


def test_failures_page_has_error_traceback_and_retry(server):
    page = get(server.url + "/failures")[2].decode()
    assert "truncated (corrupt gzip)" in page and "Traceback: ..." in page
    assert "1 attempt(s)" in page
    assert "boldcloud ingest BIDS_ROOT --store" in page and "--subject 03" in page


def test_subject_page_shows_motion_trace_images_and_exclusions(server):
    status, _, body = get(server.url + "/subject/01")
    page = body.decode()
    assert status == 200
    assert f'data-threshold="{THRESHOLD}"' in page  # dashed line at the exclusion threshold
    assert "exclusion threshold" in page and "1 volume(s) above" in page  # rmsd 1.2 > 0.9
    assert page.count("<polyline") == 2  # FD and TR-to-TR RMS
    assert "<td>median tSNR in the mask</td><td>61.25</td>" in page
    assert "<td>max framewise displacement (mm)</td><td>1.40</td>" in page
    motion_png = "derivatives/boldcloud/sub-01/ses-pre/func/sub-01_ses-pre_task-demo_run-1"
    assert f"/files/{motion_png}_desc-qc_motion.png" in page
    assert f"/files/{motion_png}_desc-qc_mask.png" in page
    status, headers, png = get(f"{server.url}/files/{motion_png}_desc-qc_motion.png")
    assert status == 200 and headers["content-type"] == "image/png" and png[:4] == b"\x89PNG"
    excluded = get(server.url + "/subject/02")[2].decode()
    assert f"Excluded: motion: {EXCLUDED_REASON}" in excluded
    assert get(server.url + "/subject/99")[0] == 404


def test_file_endpoint_serves_only_results_files(server, study_store):
    assert safe_key("derivatives/a/b.png") == "derivatives/a/b.png"
    for bad in (
        "manifest/index.json",
        "derivatives/../manifest/x.json",
        "/etc/passwd",
        "group/x.py",
    ):
        assert safe_key(bad) is None, bad
    assert get(server.url + "/files/manifest/tasks/ingest/x.json")[0] == 404
    assert get(server.url + "/files/derivatives/%2e%2e/%2e%2e/etc/passwd.json")[0] == 404
    study_store.write_bytes("group/report.html", b"<script>alert(1)</script>")
    status, headers, _ = get(server.url + "/files/group/report.html")
    assert status == 200 and headers["content-security-policy"] == "sandbox"


def test_results_page_empty_then_with_group_outputs(server, study_store):
    assert "No group results yet" in get(server.url + "/results")[2].decode()
    study_store.write_bytes("group/P40vsP0_zstat.png", png_bytes())
    study_store.write_bytes(
        "group/P40vsP0_clusters.tsv", b"cluster\tvoxels\tz_max\n1\t412\t5.21\n2\t88\t3.90\n"
    )
    page = get(server.url + "/results")[2].decode()
    assert "No group results yet" not in page
    assert "/files/group/P40vsP0_zstat.png" in page
    assert "<td>412</td>" in page and "<td>5.21</td>" in page


def test_cluster_page_workers_throughput_and_dask_link(server, study_store):
    page = get(server.url + "/cluster")[2].decode()
    assert "node-a" in page and "node-b" in page and "No Dask dashboard address" in page
    record_cluster(study_store, "http://127.0.0.1:8787/status", "dask (tcp://127.0.0.1:8786)")
    page = get(server.url + "/cluster")[2].decode()
    assert 'href="http://127.0.0.1:8787/status"' in page and "tcp://127.0.0.1:8786" in page
    data = json.loads(get(server.url + "/api/cluster")[2])
    assert sum(n for _, n in data["throughput"]["bins"]) == sum(
        s["finished"] for s in data["stages"]
    )
    workers = {w["worker"]: w for w in data["workers"]}
    assert workers["node-b"]["running"] == 2 and workers["node-b"]["failed"] == 1


# ---------------------------------------------------------------- boldcloud status
def test_status_command_prints_the_same_overview(study_store):
    from infra.dashboard.terminal import print_status

    console = Console(record=True, width=300, file=io.StringIO())
    assert print_status(study_store, console) == 0
    text = console.export_text()
    assert f"{study_store.url}: " in text and "4 subjects" in text
    ingest = next(line for line in text.splitlines() if line.strip().startswith("ingest"))
    assert ingest.split()[1:7] == ["0", "2", "5", "1", "0", "2/4"]
    cells = 4 * sum(s.granularity != "group" for s in STAGES)  # 4 subjects x per-subject stages
    assert f"11/{cells} subject x stage cells finished ({100 * 11 / cells:.1f} %)" in text
    assert "1 with failures" in text and FAILED_ERROR in text


# ---------------------------------------------------------------- S3
@pytest.mark.s3
def test_dashboard_reads_a_store_on_s3(s3_server, tmp_path):
    from infra.storage import filesystem

    local = make_store(tmp_path / "local")
    fs, _ = filesystem("s3://dash")
    if not fs.exists("dash"):
        fs.mkdir("dash")
    fs.put(str(tmp_path / "local") + "/", "dash/study/", recursive=True)
    url = "s3://dash/study"
    with BackgroundServer(create_app(url, min_interval_s=0.0)) as srv:
        remote = json.loads(get(srv.url + "/api/overview")[2])
        expected = overview(ManifestCache(local).tasks())
        assert remote["store"] == url
        assert remote["rows"] == expected["rows"] and remote["counts"] == expected["counts"]
        board = srv.server.config.app.state.dashboard
        assert board.cache.stats.read == len(local.list("manifest/tasks", ".json"))
        put(Store(url), "ingest", "sub-10_ses-pre_task-demo_run-1", "done")
        after = json.loads(get(srv.url + "/api/overview")[2])
        assert board.cache.stats.read == 1  # only the rewritten record (new ETag)
        assert after["counts"]["ingest"]["done"] == expected["counts"]["ingest"]["done"] + 1
        page = get(srv.url + "/subject/01")[2].decode()
        assert f'data-threshold="{THRESHOLD}"' in page
        png = "derivatives/boldcloud/sub-01/ses-pre/func/sub-01_ses-pre_task-demo_run-1"
        assert get(f"{srv.url}/files/{png}_desc-qc_motion.png")[2][:4] == b"\x89PNG"
