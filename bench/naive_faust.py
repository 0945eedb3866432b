"""(b) The Faust agent a user would write first: a JSON `faust.Record` decoded per event and a
table update per event (Faust defaults otherwise, apart from the Tansu join timeouts).

Runs in its own process (`python -m bench.naive_faust ...`, started by `run`), as its own app id,
so its own consumer group, reading the same topic from the earliest offset. It writes its
progress to a JSON file; the parent stops it once it has seen N records. Timed from its first
record to its N-th (the group join and changelog topic creation are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.procs import log, spawn, stop

# -- the child: the naive app -------------------------------------------------------------------


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def child_main(argv: list[str] | None = None) -> None:
    import faust

    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    progress = Path(args.progress)
    n = args.records

    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.datadir,
        topic_partitions=args.partitions,
        broker_session_timeout=6,  # Tansu holds JoinGroup for half of it (DESIGN §7)
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )

    class UsageEvent(faust.Record, serializer="json"):
        account_id: str = ""
        event_id: str = ""
        api_key_id: str = ""
        model: str = ""
        timestamp: str = ""
        input_tokens: int = 0
        output_tokens: int = 0
        channel: str = "api"

    topic = app.topic(args.topic, value_type=UsageEvent, partitions=args.partitions)
    tokens_per_account = app.Table("tokens_per_account", default=int, partitions=args.partitions)
    state: dict[str, Any] = {"count": 0, "first_at": None, "last_at": None, "done_at": None, "pid": os.getpid()}

    @app.agent(topic)
    async def meter(events: Any) -> None:
        async for event in events:
            # what a first version does: one decoded Record, one table update, per event
            account = event.account_id if isinstance(event.account_id, str) else ""
            tokens = (
                event.input_tokens + event.output_tokens
                if isinstance(event.input_tokens, int) and isinstance(event.output_tokens, int)
                else 0
            )
            tokens_per_account[account] += tokens
            now = time.perf_counter()
            state["count"] += 1
            if state["first_at"] is None:
                state["first_at"] = now
            state["last_at"] = now
            if state["count"] == n:
                state["done_at"] = now
                _write(progress, state)

    @app.timer(interval=1.0)
    async def report() -> None:
        _write(progress, state)

    _write(progress, state)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


# -- the parent ---------------------------------------------------------------------------------


def run(bootstrap: str, topic: str, n: int, workdir: Path, timeout_s: float = 900.0, partitions: int = 4) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    progress = workdir / "naive-progress.json"
    app_id = f"bench-naive-{uuid.uuid4().hex[:8]}"
    repo_root = str(Path(__file__).resolve().parent.parent)
    env = {"PYTHONPATH": repo_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = spawn(
        [
            sys.executable,
            "-m",
            "bench.naive_faust",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--records",
            str(n),
            "--progress",
            str(progress),
            "--datadir",
            str(workdir / "faust-data"),
            "--app-id",
            app_id,
            "--partitions",
            str(partitions),
        ],
        log_path=workdir / "naive-faust.log",
        cwd=workdir,
        env=env,
    )
    started = time.monotonic()
    data: dict[str, Any] = {}
    last_report = 0.0
    try:
        while True:
            time.sleep(0.5)
            try:
                data = json.loads(progress.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("done_at") is not None:
                break
            if proc.poll() is not None:
                tail = (workdir / "naive-faust.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the naive Faust app exited with {proc.returncode} after {data.get('count', 0)} records:\n{tail}")
            elapsed = time.monotonic() - started
            if elapsed - last_report >= 10:
                last_report = elapsed
                log(f"naive Faust: {data.get('count', 0)}/{n} records after {elapsed:.0f}s")
            if elapsed > timeout_s:
                log(f"naive Faust: deadline of {timeout_s:g}s reached at {data.get('count', 0)} records; rate from what it saw")
                break
    finally:
        stop(proc, signal.SIGTERM, grace_s=10.0)
    count = int(data.get("count") or 0)
    first, end = data.get("first_at"), data.get("done_at") or data.get("last_at")
    if not count or first is None or end is None or end <= first:
        return {"records": count, "seconds": None, "rps": None, "complete": False, "app_id": app_id}
    seconds = end - first
    return {
        "records": count,
        "seconds": seconds,
        "rps": (count - 1) / seconds,
        "complete": data.get("done_at") is not None,
        "app_id": app_id,
    }


if __name__ == "__main__":
    child_main()
