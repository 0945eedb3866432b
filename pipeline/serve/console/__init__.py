"""The management console: read-only pages served by the worker's aiohttp app (and by
`billing console` against a ClickHouse server).

Pages and assets are package data (pages/*.html, static/*): HTML and JavaScript that fetch the
JSON endpoints under /api/console/ and draw with Apache ECharts, vendored at a pinned version in
static/ with its licence (no CDN: the machines have no internet). Every endpoint only reads, and
runs through the app's `on_db` like the data API, so it never runs beside one of the worker's
writes. Static assets stay under /console/static/ (open, like probes, when a token guards the API).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Awaitable, Callable

from aiohttp import web

from pipeline.serve.console import data

ECHARTS_VERSION = "5.6.0"  # npm `echarts`, dist/echarts.min.js + LICENSE, NOTICE in static/
OnDb = Callable[..., Awaitable[Any]]
PAGES = ("operator", "account", "statement")


@functools.lru_cache(maxsize=None)
def page(name: str) -> str:
    return resources.files("pipeline.serve.console").joinpath("pages", f"{name}.html").read_text(encoding="utf-8")


def static_dir() -> str:
    return str(resources.files("pipeline.serve.console").joinpath("static"))


def _default_limits() -> tuple[int, int, int]:
    """The catalog's default rate limits (the worker's catalog: BILLING_CATALOG or the bundled one)."""
    from pipeline.core.catalog import load_catalog
    from pipeline.settings import load_settings

    limits = load_catalog(load_settings().catalog).default_limits
    return limits.qps, limits.qpm, limits.tpm


def add_routes(
    app: web.Application,
    client_of: Callable[[], Any],
    free_quota: int,
    health: Callable[[], dict[str, Any]],
    on_db: OnDb,
    metrics: Callable[[], str] | None = None,
) -> None:
    """Register the pages, assets and JSON endpoints on the API's app (inside build_app, so that
    whatever guards the API guards these too)."""

    def arg(request: web.Request, name: str) -> str | None:
        return request.query.get(name) or None

    def html(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=page(name), content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"})

        return handler

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/console")

    cache = data.OverviewCache()

    async def overview(request: web.Request) -> web.Response:
        return web.json_response(await on_db(cache.get, client_of(), arg(request, "from"), arg(request, "to")))

    async def pipeline_health(request: web.Request) -> web.Response:
        return web.json_response(data.pipeline_health(health(), metrics() if metrics else ""))

    async def accounts(request: web.Request) -> web.Response:
        return web.json_response(await on_db(data.accounts, client_of(), arg(request, "prefix"), int(arg(request, "limit") or 200)))

    async def account(request: web.Request) -> web.Response:
        row = await on_db(data.account, client_of(), request.match_info["account_id"], free_quota, _default_limits())
        if row is None:
            return web.json_response({"error": "unknown account"}, status=404)
        return web.json_response(row)

    async def usage(request: web.Request) -> web.Response:
        return web.json_response(
            await on_db(
                data.usage,
                client_of(),
                request.match_info["account_id"],
                arg(request, "from"),
                arg(request, "to"),
                arg(request, "by") or "model",
            )
        )

    async def details(request: web.Request) -> web.Response:
        return web.json_response(
            await on_db(data.details, client_of(), request.match_info["account_id"], arg(request, "from"), arg(request, "to"))
        )

    async def statement(request: web.Request) -> web.Response:
        month = arg(request, "month") or ""
        result = await on_db(data.statement, client_of(), request.match_info["account_id"], month)
        if request.match_info.get("ext") == ".csv":
            name = f"statement-{result['account_id']}-{result['month']}.csv".replace('"', "")
            return web.Response(
                text=data.statement_csv(result),
                content_type="text/csv",
                charset="utf-8",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        return web.json_response(result)

    app.router.add_get("/", root)
    app.router.add_get("/console", html("operator"))
    app.router.add_get("/console/", html("operator"))
    app.router.add_get("/console/account/{account_id}", html("account"))
    app.router.add_get("/console/statement/{account_id}", html("statement"))
    app.router.add_static("/console/static/", static_dir(), append_version=False)
    app.router.add_get("/api/console/overview", overview)
    app.router.add_get("/api/console/health", pipeline_health)
    app.router.add_get("/api/console/accounts", accounts)
    app.router.add_get("/api/console/accounts/{account_id}", account)
    app.router.add_get("/api/console/accounts/{account_id}/usage", usage)
    app.router.add_get("/api/console/accounts/{account_id}/details", details)
    app.router.add_get("/api/console/accounts/{account_id}/statement{ext:(\\.csv)?}", statement)
