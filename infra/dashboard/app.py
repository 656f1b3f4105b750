"""The dashboard's web application (Starlette + Jinja2 templates) and its server (uvicorn).

Pages are rendered on the server; the overview then polls ``/api/overview`` (plain
``fetch``, no build step, no page reload) and repaints only what changed. All store reads run in
Starlette's thread pool (endpoints are plain functions), never on the event loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from infra.dashboard import pages, views
from infra.dashboard.cache import ManifestCache
from infra.dashboard.security import SecurityHeaders, TokenMiddleware
from infra.storage import Store

HERE = Path(__file__).resolve().parent


def _when(timestamp: float | None) -> str:
    """``2026-11-27 22:18:51 UTC`` (or ``-``)."""
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Dashboard:
    """State shared by the endpoints: the store, its record cache and a memo of the overview.

    Parameters
    ----------
    store_url : str
        Local path or ``s3://bucket/prefix`` of the study's store.
    refresh_s : float
        How often the overview page polls.
    min_interval_s : float, optional
        The store is re-listed at most this often, whatever the number of clients (default 1 s
        for a local store, 5 s for object storage, where every listing is billed requests).
    dask_dashboard : str, optional
        Link to the Dask dashboard when the manifest does not record one.
    """

    def __init__(
        self,
        store_url: str,
        refresh_s: float = 2.0,
        min_interval_s: float | None = None,
        dask_dashboard: str | None = None,
    ) -> None:
        self.store = Store(store_url)
        if min_interval_s is None:
            min_interval_s = 5.0 if self.store.remote else 1.0
        self.cache = ManifestCache(self.store, min_interval_s=min_interval_s)
        self.refresh_s = refresh_s
        self.dask_dashboard = dask_dashboard
        self._grid: tuple[int, dict[str, Any], views.ProgressBase] | None = None
        self._memo: tuple[tuple[int, int], dict[str, Any], bytes] | None = None
        self._memo_lock = threading.Lock()

    def overview(self) -> tuple[dict[str, Any], bytes]:
        """The overview (and its JSON) for the current records.

        The grid is recomputed only when a record changed (the cache's generation), the
        progress and ETA at most once a second (they depend on the clock).
        """
        generation, tasks = self.cache.snapshot()
        second = int(time.time())
        with self._memo_lock:
            if self._grid is None or self._grid[0] != generation:
                self._grid = (generation, *views.grid(tasks))
                self._memo = None
            if self._memo is None or self._memo[0] != (generation, second):
                now = time.time()
                data = {
                    **self._grid[1],
                    "progress": views.progress_at(self._grid[2], now),
                    "generated": now,
                    "generation": generation,
                    "store": self.store.url,
                }
                body = json.dumps(data, separators=(",", ":")).encode()
                self._memo = ((generation, second), data, body)
            return self._memo[1], self._memo[2]


def create_app(
    store_url: str,
    token: str | None = None,
    refresh_s: float = 2.0,
    min_interval_s: float | None = None,
    dask_dashboard: str | None = None,
) -> Starlette:
    """The dashboard application for one store.

    Parameters
    ----------
    store_url : str
        Local path or ``s3://bucket/prefix``.
    token : str, optional
        When given, every request needs it (see :mod:`infra.dashboard.security`).
    refresh_s, min_interval_s, dask_dashboard
        See :class:`Dashboard`.
    """
    board = Dashboard(store_url, refresh_s, min_interval_s, dask_dashboard)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["duration"] = views.format_duration
    templates.env.filters["when"] = _when

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(
            base=request.scope.get("root_path", ""),
            store_url=board.store.url,
            study=pages.study_info(board.store),
            refresh_s=board.refresh_s,
        )
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def overview_page(request: Request) -> Response:
        data, _ = board.overview()
        return page(request, "overview.html", data=data)

    def overview_api(request: Request) -> Response:
        data, body = board.overview()
        since = request.query_params.get("since")
        if since is not None and since == str(data["generation"]):
            slim = {"generation": data["generation"], "unchanged": True}
            return JSONResponse({**slim, "progress": data["progress"]}, headers=_NO_STORE)
        return Response(body, media_type="application/json", headers=_NO_STORE)

    def failures_data() -> list[dict[str, Any]]:
        return pages.failure_details(board.cache, board.cache.tasks(), board.store.url)

    def failures_page(request: Request) -> Response:
        return page(request, "failures.html", failures=failures_data())

    def failures_api(request: Request) -> Response:
        return JSONResponse(failures_data(), headers=_NO_STORE)

    def subject_data(subject: str) -> dict[str, Any]:
        tasks = board.cache.tasks()
        data = pages.subject_details(board.cache, tasks, subject)
        data["failures"] = pages.failure_details(board.cache, tasks, board.store.url, subject)
        return data

    def subject_page(request: Request) -> Response:
        data = subject_data(request.path_params["subject"])
        return page(request, "subject.html", 200 if data["tasks"] else 404, data=data)

    def subject_api(request: Request) -> Response:
        data = subject_data(request.path_params["subject"])
        return JSONResponse(data, status_code=200 if data["tasks"] else 404, headers=_NO_STORE)

    def results_page(request: Request) -> Response:
        return page(request, "results.html", data=pages.results(board.store))

    def cluster_data() -> dict[str, Any]:
        data = views.cluster(board.cache.tasks())
        data["links"] = pages.cluster_links(board.store, board.dask_dashboard)
        stats = board.cache.stats
        data["cache"] = {"listed": stats.listed, "read": stats.read, "list_s": stats.list_s}
        return data

    def cluster_page(request: Request) -> Response:
        return page(request, "cluster.html", data=cluster_data())

    def cluster_api(request: Request) -> Response:
        return JSONResponse(cluster_data(), headers=_NO_STORE)

    def file(request: Request) -> Response:
        key = pages.safe_key(request.path_params["key"])
        if key is None:
            return Response("not a results file\n", status_code=404, media_type="text/plain")
        try:
            blob = board.store.read_bytes(key)
        except (FileNotFoundError, IsADirectoryError):
            return Response("no such file in the store\n", status_code=404, media_type="text/plain")
        headers = {"cache-control": "private, max-age=60"}
        if key.endswith(".html"):  # reports render sandboxed: no script access to this origin
            headers["content-security-policy"] = "sandbox"
        return Response(blob, media_type=pages.media_type(key), headers=headers)

    routes = [
        Route("/", overview_page),
        Route("/api/overview", overview_api),
        Route("/failures", failures_page),
        Route("/api/failures", failures_api),
        Route("/subject/{subject}", subject_page),
        Route("/api/subject/{subject}", subject_api),
        Route("/results", results_page),
        Route("/cluster", cluster_page),
        Route("/api/cluster", cluster_api),
        Route("/files/{key:path}", file),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if token:
        middleware.append(Middleware(TokenMiddleware, token=token))
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={OSError: _store_unreachable}
    )
    app.state.dashboard = board
    return app


_NO_STORE = {"cache-control": "no-store"}


async def _store_unreachable(request: Request, exc: Exception) -> Response:
    """503 when the store cannot be read (network, credentials): the page keeps polling."""
    message = f"cannot read the store: {type(exc).__name__}: {exc}\n"
    return Response(message, status_code=503, media_type="text/plain")


class BackgroundServer:
    """Serve an app with uvicorn in a daemon thread (tests, benchmarks, notebooks).

    Parameters
    ----------
    app : ASGI app
    host : str
    port : int
        0 picks a free port; the chosen one is in :attr:`url` once started.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.url = ""
        self._thread = threading.Thread(target=self.server.run, daemon=True, name="dashboard")

    def start(self, timeout_s: float = 15.0) -> BackgroundServer:
        """Start serving; returns once the socket accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for it."""
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = 8050,
    token: str | None = None,
    refresh_s: float = 2.0,
    dask_dashboard: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the dashboard until interrupted (``boldcloud dashboard``).

    ``token`` must already be resolved (:func:`infra.dashboard.security.resolve_token`); the
    caller refuses a non-loopback host without one.
    """
    import uvicorn

    app = create_app(store_url, token=token, refresh_s=refresh_s, dask_dashboard=dask_dashboard)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    announce(f"Dashboard of {store_url}: {url}" + (f"?token={token}" if token else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
