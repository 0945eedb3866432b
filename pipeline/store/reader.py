"""Where the query commands read from: the running worker's API, or ClickHouse directly.

With a ClickHouse server (http/https URL) the CLI queries it directly. With the embedded
engine, a running `billing up` owns the data directory, so the CLI asks its API; when nothing
runs, the CLI opens the engine itself.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

from pipeline.runtime import read_runtime
from pipeline.settings import Settings
from pipeline.store import queries
from pipeline.store.chclient import connect

Row = dict[str, Any]


class Reader(Protocol):
    def bills(self, account: str | None, start: str | None, end: str | None) -> list[Row]: ...
    def rejected(self, account: str | None, reason: str | None) -> list[Row]: ...
    def account(self, account_id: str) -> Row | None: ...
    def barrier_partitions(self, barrier_id: str) -> int: ...
    def account_ids(self) -> list[str]: ...
    def rebill_accounts(self, start: str, end: str, account: str | None) -> list[str]: ...
    def rebill_plan(self, catalog: dict[str, Any], start: str, end: str, accounts: list[str], run_id: str) -> Row: ...
    def write_rebill_audit(self, audit: Row) -> None: ...
    def settlements(self, account: str | None) -> list[Row]: ...
    def sql(self, query: str, max_rows: int, timeout_s: float, params: dict[str, str] | None = None) -> Row: ...


class QueryError(RuntimeError):
    """A query the user asked for failed; the message is for them."""


class WorkerBusy(QueryError):
    """The worker did not answer in time: a query waits for the write in flight (a large unit's, or
    one retrying an unavailable ClickHouse). Worth asking again."""


class DirectReader:
    def __init__(self, settings: Settings, free_quota: int) -> None:
        from pipeline.store.chcluster import client_options

        self.client = connect(settings.clickhouse_url, client_options(settings, settings.clickhouse_url))  # TLS, cluster reads
        self.free_quota = free_quota

    def bills(self, account: str | None, start: str | None, end: str | None) -> list[Row]:
        return queries.bills(self.client, account, start, end)

    def rejected(self, account: str | None, reason: str | None) -> list[Row]:
        return queries.rejected(self.client, account, reason)

    def account(self, account_id: str) -> Row | None:
        return queries.account(self.client, account_id, self.free_quota)

    def barrier_partitions(self, barrier_id: str) -> int:
        return queries.barrier_partitions(self.client, barrier_id)

    def account_ids(self) -> list[str]:
        return queries.account_ids(self.client)

    def rebill_accounts(self, start: str, end: str, account: str | None) -> list[str]:
        return queries.rebill_accounts(self.client, start, end, account)

    def rebill_plan(self, catalog: dict[str, Any], start: str, end: str, accounts: list[str], run_id: str) -> Row:
        return queries.rebill_plan(self.client, catalog, start, end, accounts, run_id)

    def write_rebill_audit(self, audit: Row) -> None:
        queries.write_rebill_audit(self.client, audit)

    def settlements(self, account: str | None) -> list[Row]:
        return queries.settlements(self.client, account)

    def sql(self, query: str, max_rows: int, timeout_s: float, params: dict[str, str] | None = None) -> Row:
        from pipeline.store.sqlquery import run_sql

        return run_sql(self.client, query, max_rows, timeout_s, params)


class ApiReader:
    def __init__(self, base_url: str, timeout_s: float = 60.0, token: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.token = token  # the API's (beyond loopback) or the operator's (for writes): api.Access
        self.timeout_s = timeout_s  # for reads; a rebill's plan (POST) may take much longer

    def _get(self, path: str, params: dict[str, str | None] | None = None) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v})
        return self._request(urllib.request.Request(f"{self.base}{path}" + (f"?{query}" if query else "")), timeout=self.timeout_s)

    def _post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"{self.base}{path}", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        return self._request(request, timeout=3600)

    def _request(self, request: urllib.request.Request, timeout: float) -> Any:
        """JSON back, or: None for 404, ValueError (exit 2) for 400, QueryError otherwise."""
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            body = exc.read().decode("utf-8", errors="replace")
            try:
                body = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            if exc.code == 400:
                raise ValueError(body) from None
            raise QueryError(f"the worker at {self.base} answered {exc.code}: {str(body)[:500]}") from None
        except TimeoutError:
            raise WorkerBusy(
                f"the worker at {self.base} did not answer within {timeout:g}s: it is writing a large unit "
                "or retrying ClickHouse (see its log); try again"
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise WorkerBusy(f"the worker at {self.base} did not answer within {timeout:g}s (see its log); try again") from None
            raise QueryError(f"cannot reach the worker at {self.base} ({exc.reason}); is `billing up` still running?") from None

    def bills(self, account: str | None, start: str | None, end: str | None) -> list[Row]:
        return self._get("/api/bills", {"account": account, "from": start, "to": end})

    def rejected(self, account: str | None, reason: str | None) -> list[Row]:
        return self._get("/api/rejected", {"account": account, "reason": reason})

    def account(self, account_id: str) -> Row | None:
        return self._get(f"/api/accounts/{urllib.parse.quote(account_id, safe='')}")

    def barrier_partitions(self, barrier_id: str) -> int:
        return int(self._get(f"/api/barriers/{urllib.parse.quote(barrier_id, safe='')}")["partitions"])

    def account_ids(self) -> list[str]:
        return list(self._get("/api/accounts"))

    def rebill_accounts(self, start: str, end: str, account: str | None) -> list[str]:
        return list(self._post("/api/rebill/accounts", {"from": start, "to": end, "account": account}))

    def rebill_plan(self, catalog: dict[str, Any], start: str, end: str, accounts: list[str], run_id: str) -> Row:
        return self._post("/api/rebill/plan", {"catalog": catalog, "from": start, "to": end, "accounts": accounts, "run_id": run_id})

    def write_rebill_audit(self, audit: Row) -> None:
        self._post("/api/rebill/audit", audit)

    def settlements(self, account: str | None) -> list[Row]:
        return self._get("/api/settlements", {"account": account})

    def sql(self, query: str, max_rows: int, timeout_s: float, params: dict[str, str] | None = None) -> Row:
        """Read-only SQL through the worker (POST, but it writes nothing); waits a little past the
        query's own time limit, which ClickHouse enforces."""
        request = urllib.request.Request(
            f"{self.base}/api/sql",
            method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"sql": query, "params": params or {}, "max_rows": max_rows, "timeout_s": timeout_s}).encode(),
        )
        return self._request(request, timeout=max(self.timeout_s, timeout_s + 30))


def open_reader(settings: Settings, free_quota: int) -> Reader:
    if settings.clickhouse and not settings.clickhouse.startswith("chdb:"):
        return DirectReader(settings, free_quota)
    running = read_runtime(settings.data_dir)
    if running is not None:
        return ApiReader(running.api, token=settings.api_token or running.operator_token or None)
    return DirectReader(settings, free_quota)
