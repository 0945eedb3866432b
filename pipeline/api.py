"""The worker's small HTTP API: how other commands query while `billing up` holds the engine.

chdb lets one process own a data directory (DESIGN §6), so `bills`, `rejected`, `account` and
`wait` ask the running worker. Read-only; parameters go to `queries`, which binds them. Every
query runs between two of the worker's writes (`on_db`), never beside one.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from aiohttp import web

from pipeline import queries

OnDb = Callable[..., Awaitable[Any]]


def build_app(client_of: Callable[[], Any], free_quota: int, health: Callable[[], dict[str, Any]], on_db: OnDb,
              metrics: Callable[[], str] | None = None) -> web.Application:
    def arg(request: web.Request, name: str) -> str | None:
        return request.query.get(name) or None

    async def bills(request: web.Request) -> web.Response:
        rows = await on_db(queries.bills, client_of(), arg(request, "account"), arg(request, "from"), arg(request, "to"))
        return web.json_response(rows)

    async def rejected(request: web.Request) -> web.Response:
        rows = await on_db(queries.rejected, client_of(), arg(request, "account"), arg(request, "reason"))
        return web.json_response(rows)

    async def account(request: web.Request) -> web.Response:
        row = await on_db(queries.account, client_of(), request.match_info["account_id"], free_quota)
        if row is None:
            return web.json_response({"error": "unknown account"}, status=404)
        return web.json_response(row)

    async def accounts(request: web.Request) -> web.Response:
        return web.json_response(await on_db(queries.account_ids, client_of()))

    async def settlements(request: web.Request) -> web.Response:
        return web.json_response(await on_db(queries.settlements, client_of(), arg(request, "account")))

    async def rebill_accounts(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(await on_db(queries.rebill_accounts, client_of(), body["from"], body["to"], body.get("account")))

    async def rebill_plan(request: web.Request) -> web.Response:
        body = await request.json()
        plan = await on_db(queries.rebill_plan, client_of(), body["catalog"], body["from"], body["to"], body["accounts"], body["run_id"])
        return web.json_response(plan)

    async def rebill_audit(request: web.Request) -> web.Response:
        await on_db(queries.write_rebill_audit, client_of(), await request.json())
        return web.json_response({"ok": True})

    async def barrier(request: web.Request) -> web.Response:
        count = await on_db(queries.barrier_partitions, client_of(), request.match_info["barrier_id"])
        return web.json_response({"partitions": count})

    async def sql(request: web.Request) -> web.Response:
        """POST {"sql", "params", "max_rows", "timeout_s"}: READ-ONLY. One statement, run with ClickHouse's
        readonly=1 and time and row limits, between two of the worker's writes (`billing sql`)."""
        from pipeline import sqlquery

        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise ValueError('expected a JSON object {"sql": "SELECT ..."}')
        params = body.get("params") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ValueError('"params" must map names to strings')
        result = await on_db(sqlquery.run_sql, client_of(), body["sql"], body.get("max_rows", sqlquery.DEFAULT_MAX_ROWS),
                             body.get("timeout_s", sqlquery.DEFAULT_TIMEOUT_S), params)
        return web.json_response(result)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(health())

    async def readyz(request: web.Request) -> web.Response:
        """Ready when ClickHouse answers: a worker that cannot write should get no traffic."""
        try:
            await asyncio.wait_for(on_db(lambda: client_of().command("SELECT 1")), timeout=5)
        except Exception as exc:  # any failure means not ready; the reason helps the operator
            return web.json_response({"ready": False, "reason": str(exc)[:200]}, status=503)
        return web.json_response({"ready": True})

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(text=metrics() if metrics else "", content_type="text/plain", charset="utf-8")

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except ValueError as exc:  # bad user input, e.g. a --from that is not RFC 3339
            return web.json_response({"error": str(exc)}, status=400)

    app = web.Application(middlewares=[errors])
    app.router.add_get("/api/bills", bills)
    app.router.add_get("/api/rejected", rejected)
    app.router.add_get("/api/accounts", accounts)
    app.router.add_get("/api/accounts/{account_id}", account)
    app.router.add_get("/api/settlements", settlements)
    app.router.add_get("/api/barriers/{barrier_id}", barrier)
    app.router.add_post("/api/rebill/accounts", rebill_accounts)
    app.router.add_post("/api/rebill/plan", rebill_plan)
    app.router.add_post("/api/rebill/audit", rebill_audit)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/api/sql", sql)
    from pipeline import console

    console.add_routes(app, client_of, free_quota, health, on_db, metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}"
