"""The worker's small HTTP API: how other commands query while `billing up` holds the engine.

chdb lets one process own a data directory (DESIGN §6), so `bills`, `rejected`, `account` and
`wait` ask the running worker. Parameters go to `queries`, which binds them. Every query runs
between two of the worker's writes (`on_db`), never beside one.

Access (CONTRACT): probes and /metrics are open. Reads are open on loopback only; beyond it they
need the API token (`Authorization: Bearer`, or the `billing_token` cookie that /console?token=
sets for a browser). Every POST needs the operator token (BILLING_API_TOKEN, or one the worker
makes at start and leaves, owner-only, in the data dir's runtime.json for the CLI on this machine).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from pipeline.store import queries

OnDb = Callable[..., Awaitable[Any]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PREFIXES = ("/console/static/",)  # scripts and styles of the console: no data in them
TOKEN_COOKIE = "billing_token"
READ_POSTS = frozenset({"/api/sql"})  # a POST only because the query is long: read-only, a read's token
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """Who may call what: `token` for reads beyond loopback, `operator_token` for every write."""

    operator_token: str
    token: str | None = None
    loopback_only: bool = True

    def may_read(self, given: str | None) -> bool:
        return (self.loopback_only and self.token is None) or self._matches(given, self.token) or self.may_write(given)

    def may_write(self, given: str | None) -> bool:
        return self._matches(given, self.operator_token)

    @staticmethod
    def _matches(given: str | None, expected: str | None) -> bool:
        return bool(given) and bool(expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())


def _given_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE)


def auth_middleware(access: Access) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        given = _given_token(request)
        reading = request.method in ("GET", "HEAD") or request.path in READ_POSTS
        allowed = access.may_read(given) if reading else access.may_write(given)
        if not allowed:
            needed = "the API token (BILLING_API_TOKEN)" if reading else "the operator token"
            return web.json_response(
                {"error": f"unauthorized: {request.method} {request.path} needs {needed} as 'Authorization: Bearer <token>'"}, status=401
            )
        response = await handler(request)
        if request.query.get("token") and given == request.query.get("token"):  # a browser keeps it for the next pages
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict")
        return response

    return auth


METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_app(
    client_of: Callable[[], Any],
    free_quota: int,
    health: Callable[[], dict[str, Any]],
    on_db: OnDb,
    metrics: Callable[[], str] | None = None,
    access: Access | None = None,
    ready: Callable[[], str | None] | None = None,
) -> web.Application:
    """`ready`: why the worker should get no traffic (e.g. a batch failing again and again), or None."""

    def arg(request: web.Request, name: str) -> str | None:
        value = request.query.get(name)
        if name == "account":
            return account_arg(value)
        return value or None

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
        return web.json_response(
            await on_db(queries.rebill_accounts, client_of(), body["from"], body["to"], account_arg(body.get("account")))
        )

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
        from pipeline.store import sqlquery

        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise ValueError('expected a JSON object {"sql": "SELECT ..."}')
        params = body.get("params") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ValueError('"params" must map names to strings')
        result = await on_db(
            sqlquery.run_sql,
            client_of(),
            body["sql"],
            body.get("max_rows", sqlquery.DEFAULT_MAX_ROWS),
            body.get("timeout_s", sqlquery.DEFAULT_TIMEOUT_S),
            params,
        )
        return web.json_response(result)

    async def healthz(request: web.Request) -> web.Response:
        body = health()
        return web.json_response(body, status=503 if body.get("status") == "stuck" else 200)

    async def readyz(request: web.Request) -> web.Response:
        """Ready when ClickHouse answers and no batch is stuck: a worker that cannot write should get no traffic."""
        stuck = ready() if ready is not None else None
        if stuck is not None:
            return web.json_response({"ready": False, "reason": stuck}, status=503)
        try:
            await asyncio.wait_for(on_db(lambda: client_of().command("SELECT 1")), timeout=5)
        except Exception as exc:  # any failure means not ready; the reason helps the operator
            return web.json_response({"ready": False, "reason": str(exc)[:200]}, status=503)
        return web.json_response({"ready": True})

    async def prometheus(request: web.Request) -> web.Response:
        # the exposition format's own content type (Prometheus 3 refuses a scrape without a known one)
        return web.Response(body=(metrics() if metrics else "").encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except ValueError as exc:  # bad user input, e.g. a --from that is not RFC 3339
            return web.json_response({"error": str(exc)}, status=400)

    app = web.Application(middlewares=[auth_middleware(access or Access(operator_token="")), errors])
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
    from pipeline.serve import console

    console.add_routes(app, client_of, free_quota, health, on_db, metrics)
    return app


def account_arg(value: str | None) -> str | None:
    """An account filter: absent is every account; empty is a mistake (400), never every account."""
    if value is not None and not value:
        raise ValueError("account is empty: name an account, or leave the parameter out for every account")
    return value


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}"
