"""`billing console`: the worker's pages and data API served on their own, against a ClickHouse
server (a production deployment, where the workers' APIs are not meant for people).

Same app as the worker's (`pipeline.serve.api.build_app`), so the same pages, endpoints and access
rules; queries run one at a time on a thread of their own (a clickhouse-connect client is not
shared across threads). The pipeline-health panel has no worker here: it says so.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from pipeline.settings import Settings, redact

T = TypeVar("T")


def serve_console(settings: Settings, host: str, port: int) -> int:
    from pipeline.core.catalog import load_catalog
    from pipeline.runtime import read_runtime
    from pipeline.serve import api
    from pipeline.store.chclient import connect, migrate

    if not api.is_loopback(host) and not settings.api_token:
        raise ValueError(
            f"--host {host} serves bills beyond this machine: set BILLING_API_TOKEN (visitors open "
            "/console?token=<token> once; the browser keeps it in a cookie)"
        )
    running = read_runtime(settings.data_dir)
    if settings.clickhouse_url.startswith("chdb:") and running is not None:
        raise ValueError(f"`billing up` runs on data dir {settings.data_dir} and serves the console itself: {running.api}/console")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
    client = executor.submit(connect, settings.clickhouse_url).result()
    if settings.clickhouse_url.startswith("chdb:"):
        executor.submit(migrate, client).result()  # the embedded engine this process holds: views as this version has them

    async def on_db(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def health() -> dict[str, Any]:
        return {"status": "console", "note": "no worker in this process: see the workers' /metrics for the pipeline's health"}

    async def main() -> None:
        access = api.Access(operator_token="", token=settings.api_token, loopback_only=api.is_loopback(host))  # read-only: no writes
        app = api.build_app(lambda: client, load_catalog(settings.catalog).free_quota_tokens, health, on_db, access=access)
        runner, url = await api.serve(app, host, port)
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, and the TERM a container's stop sends
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        print(f"billing: console  {url}/console (ClickHouse {redact(settings.clickhouse_url)}); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(wait=True)
    return 0
