"""`python -m bench [--records N] [--json] [--skip PHASES] [--latency-seconds S] [--profile DIR]`

The stack: an embedded Tansu broker started by the bench process itself, and one
`billing worker` process on it (BILLING_AUTO_TICK=0, embedded ClickHouse) in a temporary data
directory. Phases, in this order:

  pipeline (d)         `billing publish` of the N records into the input topic while no worker
                       runs (timed: publish_rate); then the worker starts, and (d) pipeline_rps =
                       N / (time `billing wait` returns - time the worker's first batch arrived,
                       `first_batch_at` of its /healthz): one worker, from records already
                       published to bills queryable. Its process start -> first batch (startup,
                       group join) is left out and reported as worker_startup_s.
  publish_and_process  a second, fresh workload (seed + 1000, N records, new accounts and
                       event ids) published while the now warm worker consumes: publish start
                       -> `billing wait` returns (publish_and_process_rps). Publisher and worker
                       share the machine's cores, as (d) did before it measured one worker.
  raw (a), naive (b)   read the records, one per Kafka message, from `bench.single-records`
  fold (c)             the pure fold in this process
  processor            the worker's batch processor alone in this process (no Kafka, no Faust),
                       on a fresh embedded engine: processor_rps
  rebill (e)           `billing rebill` over the hours of every workload published
  latency              publish -> queryable bill at a steady offered load

With --profile DIR the worker of (d) runs under py-spy (raw output DIR/worker.pyspy.txt); after
(d) it is stopped, the top functions are printed to stderr, and a worker without the profiler
serves the later phases. Prints a table, or with --json one JSON object (stdout) whose keys stay
the same from run to run. Progress goes to stderr. Exit code 0 when every phase that ran
succeeded (targets missed or not), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench import fold_bench, gateway, latency, naive_faust, processor_bench, profile, raw_consumer
from bench.calibrate import machine_speed
from bench.procs import cpu_delta, cpu_snapshot, loadavg, log, stop_all
from bench.stack import BillingStack, HealthSampler, WorkerStart, find_py_spy
from pipeline import CORE_BUILD

PHASES = (
    "pipeline",
    "publish_and_process",
    "single_8",
    "gw_100k",
    "gw_1m",
    "raw",
    "naive",
    "fold",
    "processor",
    "rebill",
    "latency",
    "history",
)
NEEDS_RECORDS_IN_STACK = ("pipeline", "publish_and_process", "raw", "naive", "rebill")
SHAPE_PHASES = ("single_8", "gw_100k", "gw_1m")
GATEWAY_PHASES = (*SHAPE_PHASES, "history")  # one record per message, plain producer (bench/gateway.py)
SINGLE_SEED_OFFSET = 2000  # single_8: the (d) workload's shape, fresh accounts, one record per message
SECOND_SEED_OFFSET = 1000  # publish_and_process: a fresh workload, new accounts and event ids
PROFILE_HZ = 200
PROFILE_TOP = 25
TARGETS = {  # key: (comparison, threshold, what the issue asks)
    "pipeline_rps": (">=", 20_000, "(d) >= 20,000 records/s per worker"),
    "ratio_pipeline_to_naive": (">=", 10, "(d) >= 10x (b)"),
    "fold_rps": (">=", 200_000, "(c) >= 200,000 records/s"),
    "latency_p99_s": ("<", 1.0, "publish->queryable p99 < 1 s at 2,000 single-record messages/s from the gw_100k accounts"),
    "gw_100k_rps": (">=", 30_000, "single-record messages from 100,000 accounts >= 30,000 records/s per worker"),
    "ratio_gw_100k_to_naive": (">=", 10, "gw_100k >= 10x (b)"),
    "ratio_gw_1m_to_gw_100k": (">=", 0.8, "gw_1m >= 80% of gw_100k"),
    "ratio_history_last_to_first_million": (">=", 0.8, "the long history's last million within 20% of its first"),
    "worker_rss_max_mib": ("<", 1536, "worker RSS under 1.5 GiB throughout"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records in the workload (default 200000; use >= 200000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated phases to skip: {','.join(PHASES)} (the pipeline phase, "
        "and so (d), still runs when publish_and_process, raw, naive or rebill need its records)",
    )
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="length of the steady-load latency phase (default 30)")
    parser.add_argument("--offered-rps", type=float, default=2000.0, help="offered load of the latency phase (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="also run the long history: N single-record messages (e.g. 10000000) from 100,000 accounts over a "
        "month of event time, produced before one worker drains them; throughput and RSS per million",
    )
    parser.add_argument(
        "--gateway-records-per-account",
        type=float,
        default=2.0,
        help="gw_100k / gw_1m: records per account (default 2: every account once, as many again by Zipf)",
    )
    parser.add_argument("--naive-timeout", type=float, default=900.0, help="give up on the naive Faust app after S seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory (logs, ClickHouse)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run the worker of (d) under py-spy (raw samples to DIR/worker.pyspy.txt) and print its top functions to stderr after (d)",
    )
    args = parser.parse_args(argv)
    args.skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    unknown = args.skip - set(PHASES)
    if unknown:
        parser.error(f"unknown phases in --skip: {', '.join(sorted(unknown))} (known: {', '.join(PHASES)})")
    if args.records < 1:
        parser.error("--records must be positive")
    if args.history <= 0:
        args.skip.add("history")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.records
        self.result: dict[str, Any] = {
            "records": self.n,
            "publish_rate": None,
            "raw_consumer_rps": None,
            "naive_faust_rps": None,
            "fold_rps": None,
            "parse_rps": None,
            "parse_and_fold_rps": None,
            "processor_rps": None,
            "pipeline_rps": None,
            "publish_and_process_rps": None,
            "worker_startup_s": None,
            "rebill_rps": None,
            "ratio_pipeline_to_raw": None,
            "ratio_pipeline_to_naive": None,
            "ratio_fold_to_raw": None,
            "latency_p50_s": None,
            "latency_p99_s": None,
            "offered_rps": None,
            "cpu_count": os.cpu_count(),
            "python_version": platform.python_version(),
            "core": CORE_BUILD.label,
            "worker_core": None,  # the compiled core or the Python sources (setup.py)
            "machine_speed_start": None,
            "machine_speed_end": None,  # bench/calibrate.py
            # one record per message from a plain aiokafka producer (bench/gateway.py): records/s from
            # the first batch of a worker started on the published records to queryable, as (d)
            "single_8_rps": None,
            "gw_100k_rps": None,
            "gw_1m_rps": None,
            "ratio_single_8_to_naive": None,
            "ratio_gw_100k_to_naive": None,
            "ratio_gw_1m_to_naive": None,
            "ratio_gw_1m_to_gw_100k": None,
            "worker_rss_max_mib": None,
            "history_records": None,
            "history_per_million": None,
            "ratio_history_last_to_first_million": None,
            "shapes": {},  # per shape: records, accounts, publish rate, rps, ratio to (b), worker RSS
        }
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.stack: BillingStack | None = None
        self.lines: list[bytes] = []
        self.second_lines: list[bytes] = []  # publish_and_process's workload, once published
        self.latency_accounts: list[str] = []  # gw_100k's accounts (keyed and credited), for the latency phase
        self.workdir = Path(tempfile.mkdtemp(prefix="billing-bench-"))

    # -- orchestration -------------------------------------------------------------------
    def run(self) -> None:
        started = time.time()
        wanted = [p for p in PHASES if p not in self.args.skip]
        log(
            f"phases: {', '.join(wanted) or 'none'}; records: {self.n}; work dir {self.workdir}; "
            f"{os.cpu_count()} CPUs, load average {loadavg()}"
        )
        if self.n < 200_000:
            log(f"note: {self.n} records is below the 200,000 the issue asks for; figures are less meaningful")
        log(f"generating {self.n} records (pipeline.demo.workload.generate, seed {self.args.seed})...")
        from pipeline.demo.workload import generate

        t = time.perf_counter()
        self.lines = [line.encode() for line in generate(self.n, seed=self.args.seed)]
        log(
            f"generated {len(self.lines)} records, {sum(map(len, self.lines)) / len(self.lines):.0f} bytes on average, "
            f"in {time.perf_counter() - t:.1f}s"
        )
        self.result["machine_speed_start"] = machine_speed()
        log(f"machine speed: {self.result['machine_speed_start']:.0f} M loop steps/s (bench/calibrate.py)")
        needs_stack = any(p in wanted for p in (*NEEDS_RECORDS_IN_STACK, *GATEWAY_PHASES, "latency"))
        needs_records = any(p in wanted for p in NEEDS_RECORDS_IN_STACK)
        try:
            if needs_stack:
                self.phase("stack", self.start_stack)
            if needs_records and "stack" not in self.errors:
                self.phase("pipeline", self.phase_pipeline)
            for name, fn in (
                ("publish_and_process", self.phase_publish_and_process),
                ("single_8", self.phase_single_8),
                ("gw_100k", self.phase_gw_100k),
                ("gw_1m", self.phase_gw_1m),
                ("raw", self.phase_raw),
                ("naive", self.phase_naive),
                ("fold", self.phase_fold),
                ("processor", self.phase_processor),
                ("rebill", self.phase_rebill),
                ("latency", self.phase_latency),
                ("history", self.phase_history),
            ):
                if name not in wanted:
                    continue
                blocked = self.blocked(name)
                if blocked:
                    self.errors[name] = "not run: " + blocked
                    continue
                self.phase(name, fn)
        finally:
            self.shutdown()
        self.result["machine_speed_end"] = machine_speed()
        log(f"machine speed: {self.result['machine_speed_end']:.0f} M loop steps/s at the end")
        self.finish(started)

    def blocked(self, name: str) -> str | None:
        """Why a phase cannot run after an earlier failure (None: it can)."""
        if name in ("fold", "processor"):
            return None
        if "stack" in self.errors:
            return "the broker did not start"
        if name in GATEWAY_PHASES:
            return None
        if name != "latency" and "pipeline" in self.errors:
            return "phase (d) failed, so its records may not be published and processed"
        return None

    def phase(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        log(f"== {name} (load average {loadavg()})")
        before = cpu_snapshot()
        try:
            detail = fn() or {}
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            log(traceback.format_exc(limit=4).rstrip())
            detail = {}
        after = cpu_snapshot()
        detail["cpu"] = cpu_delta(before, after)
        detail["loadavg_1m_end"] = loadavg()
        self.details[name] = detail
        log(
            f"{name}: done in {after[0] - before[0]:.1f}s; cores busy {detail['cpu']['cores_busy']} "
            f"(ours {detail['cpu']['cores_ours']}, others {detail['cpu']['cores_others']})"
        )

    def shutdown(self) -> None:
        """The worker (SIGINT, then SIGKILL), then the broker, then anything else still running."""
        if self.stack is not None:
            log("stopping the worker (SIGINT) and the broker...")
            try:
                self.stack.stop()
            except Exception as exc:
                log(f"stopping the stack: {exc}")
            self.stack = None
        stop_all()
        if self.args.keep:
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- phases --------------------------------------------------------------------------
    def start_stack(self) -> dict[str, Any]:
        """The broker only, with the topics: (d) publishes before any worker runs."""
        env = {"BILLING_AUTO_TICK": "0"}
        for name in ("BILLING_KAFKA", "BILLING_CLICKHOUSE", "BILLING_DATA_DIR", "BILLING_LOG_EPOCH"):
            if os.environ.get(name):
                log(f"note: {name} is set in the environment; the bench ignores it (embedded stack only)")
                env[name] = ""
        self.stack = BillingStack(self.workdir / "data", env)
        t = time.monotonic()
        kafka = self.stack.start_broker()
        ready = time.monotonic() - t
        log(f"broker ready in {ready:.1f}s at {kafka} (log epoch {self.stack.epoch}); topics created")
        return {"broker_start_s": ready, "kafka": kafka, "epoch": self.stack.epoch}

    def ensure_worker(self) -> WorkerStart | None:
        """A worker for the phases after (d), started again if (d) stopped its profiled one."""
        assert self.stack is not None
        if self.stack.alive():
            return None
        log("starting billing worker...")
        started = self.stack.start_worker()
        log(f"billing worker API at {self.stack.api} after {started.api_ready_at - started.spawned_at:.1f}s")
        return started

    def settled_health(self, expected: int, within_s: float = 5.0) -> dict[str, Any]:
        """The worker's /healthz once its own count has reached `expected` records (or after
        `within_s`). `billing wait` returns when the last barrier is in ClickHouse, which the
        batch writes before its completion counts it: read at once, /healthz may still miss that
        last batch's records (a warning about records fewer than produced, for nothing)."""
        assert self.stack is not None
        deadline = time.monotonic() + within_s
        while True:
            health = self.stack.health() or {}
            if int(health.get("stats", {}).get("records", 0)) >= expected or time.monotonic() >= deadline:
                return health
            time.sleep(0.05)

    def profile_target(self) -> Path | None:
        """Where py-spy writes (d)'s profile, or None without --profile or without py-spy."""
        if self.args.profile is None:
            return None
        if find_py_spy() is None:
            log("--profile: py-spy is neither next to this Python nor on PATH (pip install py-spy); (d) runs without it")
            return None
        return self.args.profile / "worker.pyspy.txt"

    def phase_pipeline(self) -> dict[str, Any]:
        """(d) one worker, from records already in the input topic to bills queryable.

        `billing publish` runs while no worker exists, so the publisher does not share the cores
        with the worker. The worker's clock starts at its first batch (`first_batch_at` in
        /healthz), so its process start and group join (about 3 s on Tansu) stay out of (d):
        they are reported as worker_startup_s. `billing wait` starts as soon as the worker's API
        answers (about when the first batch arrives) and its barrier is in the topic a second
        later, long before the worker is through N records: the barrier does not delay the end.
        /healthz, sampled meanwhile, gives a cross-check that does not depend on the barrier."""
        assert self.stack is not None
        path = self.workdir / "records.jsonl"
        path.write_bytes(b"\n".join(self.lines) + b"\n")
        log(f"billing publish {self.n} records (no worker running)...")
        t0 = time.monotonic()
        pub = self.stack.cli("publish", str(path), timeout=3600)
        publish_s = time.monotonic() - t0
        self.result["publish_rate"] = self.n / publish_s
        log(f"published in {publish_s:.1f}s ({self.n / publish_s:,.0f}/s)")
        self.check_published(pub)
        profile_to = self.profile_target()
        log("starting billing worker" + (f" under py-spy (raw samples to {profile_to})" if profile_to else "") + "...")
        started = self.stack.start_worker(profile_to=profile_to)
        log(f"worker API at {self.stack.api} after {started.api_ready_at - started.spawned_at:.1f}s; billing wait...")
        with HealthSampler(self.stack) as sampler:
            self.stack.cli("wait", "--timeout", "3600", timeout=3700)
            t_wait = time.time()
        health = self.settled_health(self.n)
        first, last = health.get("first_batch_at"), health.get("last_batch_at")
        if first is None:
            raise RuntimeError("`billing wait` returned but the worker's /healthz has no first_batch_at")
        records = int(health.get("stats", {}).get("records", 0))
        if records < self.n:
            log(f"warning: the worker counts {records} records processed, fewer than the {self.n} published")
        # cross-check, independent of when `billing wait` got its barrier in: /healthz saw all of them
        all_seen = sampler.first_reaching(min(records, self.n))
        self.result["pipeline_rps"] = self.n / (t_wait - first)
        self.result["worker_startup_s"] = first - started.spawned_at
        log(
            f"pipeline: {self.n} records queryable {t_wait - first:.1f}s after the worker's first batch: "
            f"{self.result['pipeline_rps']:,.0f}/s (worker startup and group join before it: "
            f"{self.result['worker_startup_s']:.1f}s)"
        )
        detail = {
            "publish_seconds": publish_s,
            "publish_rate_reported_by_cli": _cli_rate(pub.stderr),
            "worker_startup_s": first - started.spawned_at,
            "worker_api_ready_s": started.api_ready_at - started.spawned_at,
            "first_batch_to_queryable_s": t_wait - first,
            "worker_first_to_last_batch_s": (last - first) if last else None,
            "worker_rps_first_batch_to_all_seen_in_healthz": self.n / (all_seen - first) if all_seen and all_seen > first else None,
            "worker_stats": health.get("stats", {}),
            "profiled": profile_to is not None,
            "worker_rss_max_mib": max((r for _, r in sampler.rss), default=0) / 2**20 or None,
        }
        self.result["worker_core"] = health.get("core")
        if profile_to is not None:
            detail["profile"] = self.finish_profile(profile_to)
        return detail

    def check_published(self, pub: Any) -> None:
        published = re.search(r"published (\d+) records", pub.stdout)
        if published and int(published.group(1)) != self.n:
            log(f"warning: billing publish says it sent {published.group(1)} records, not {self.n}")

    def finish_profile(self, path: Path) -> dict[str, Any]:
        """Stop the profiled worker (py-spy writes its file when the worker exits) and print the
        top functions. The figures of (d) were taken under the sampler: lower than without it."""
        assert self.stack is not None
        log("stopping the profiled worker so that py-spy writes its samples...")
        self.stack.stop_worker()
        if not path.exists():
            log(f"--profile: py-spy wrote no {path}; see {self.stack.log_path}")
            return {"file": str(path), "samples": 0}
        parsed = profile.parse_file(path)
        print(
            f"[bench] profile of the worker during (d), {path}: " + profile.render(parsed, top=PROFILE_TOP, rate_hz=PROFILE_HZ),
            file=sys.stderr,
            flush=True,
        )
        log("note: (d) ran under py-spy, which pauses the worker to sample it: its figure is lower than without --profile")
        return {"file": str(path), "samples": parsed.samples}

    def phase_publish_and_process(self) -> dict[str, Any]:
        """The old (d): a fresh workload published while the warm worker consumes it, timed from
        publish start to `billing wait` returning; the worker's /healthz is sampled meanwhile."""
        assert self.stack is not None
        restarted = self.ensure_worker() is not None
        seed = self.args.seed + SECOND_SEED_OFFSET
        from pipeline.demo.workload import generate

        lines = [line.encode() for line in generate(self.n, seed=seed)]
        path = self.workdir / "records-2.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        base_records = int((self.stack.health() or {}).get("stats", {}).get("records", 0))
        with HealthSampler(self.stack) as sampler:
            log(f"billing publish {self.n} fresh records (seed {seed}) while the worker consumes...")
            t0 = time.time()
            pub = self.stack.cli("publish", str(path), timeout=3600)
            self.second_lines = lines
            t_pub = time.time()
            log(f"published in {t_pub - t0:.1f}s ({self.n / (t_pub - t0):,.0f}/s); billing wait...")
            self.stack.cli("wait", "--timeout", "3600", timeout=3700)
            t_wait = time.time()
        self.check_published(pub)
        health = self.stack.health() or {}
        processed = [(t, r - base_records) for t, r in sampler.samples]
        first = next((t for t, r in processed if r > 0), None)
        at_pub_end = max((r for t, r in processed if t <= t_pub), default=0)
        self.result["publish_and_process_rps"] = self.n / (t_wait - t0)
        log(
            f"publish and process: {self.n} records queryable {t_wait - t0:.1f}s after publish started: "
            f"{self.result['publish_and_process_rps']:,.0f}/s"
        )
        return {
            "seed": seed,
            "worker_restarted_first": restarted,
            "publish_seconds": t_pub - t0,
            "wait_seconds": t_wait - t_pub,
            "total_seconds": t_wait - t0,
            "publish_rate": self.n / (t_pub - t0),
            "publish_rate_reported_by_cli": _cli_rate(pub.stderr),
            "worker_first_batch_after_s": (first - t0) if first else None,
            "worker_backlog_at_publish_end": self.n - at_pub_end,
            "worker_drain_rps": _drain_rate(processed, t_pub, at_pub_end, self.n),
            "worker_rps_first_batch_to_queryable": self.n / (t_wait - first) if first else None,
            "worker_stats": health.get("stats", {}),
        }

    # -- gateway shapes: one record per message, from a plain producer (bench/gateway.py) ----
    def phase_single_8(self) -> dict[str, Any]:
        """(d)'s workload shape (8 accounts, preludes included), fresh accounts, one record per message."""
        from pipeline.demo.workload import generate

        lines = [line.encode() for line in generate(self.n, seed=self.args.seed + SINGLE_SEED_OFFSET)]
        messages = [(key.encode(), value) for value, key in fold_bench.keyed(lines)]
        return self.run_shape("single_8", messages, [], accounts=len({k for k, _ in messages}))

    def phase_gw_100k(self) -> dict[str, Any]:
        return self.gateway_shape("gw_100k", 100_000)

    def phase_gw_1m(self) -> dict[str, Any]:
        return self.gateway_shape("gw_1m", 1_000_000)

    def gateway_shape(self, name: str, accounts: int) -> dict[str, Any]:
        shape = gateway.Shape(name, accounts=accounts, records=int(accounts * self.args.gateway_records_per_account), seed=self.args.seed)
        t = time.perf_counter()
        setup = list(gateway.setup_messages(shape))
        messages = list(gateway.traffic(shape))
        log(
            f"{name}: generated {len(setup):,} setup messages and {len(messages):,} single-record messages "
            f"({gateway.distinct_accounts(messages):,} accounts) in {time.perf_counter() - t:.1f}s"
        )
        if name == "gw_100k":
            self.latency_accounts = [shape.account(rank) for rank in range(accounts)]
        return self.run_shape(name, messages, setup, accounts=accounts)

    def run_shape(self, name: str, messages: list[tuple[bytes, bytes]], setup: list[tuple[bytes, bytes]], accounts: int) -> dict[str, Any]:
        """Setup records in and processed (not timed); the worker stopped; the shape's messages
        produced by a plain aiokafka producer (publish rate); a worker started on them, timed as
        (d) from its first batch to `billing wait` returning. Its RSS is sampled meanwhile."""
        assert self.stack is not None
        from pipeline.settings import load_settings

        topic = load_settings().input_topic
        detail: dict[str, Any] = {"records": len(messages), "accounts": accounts, "distinct_accounts": gateway.distinct_accounts(messages)}
        if setup:
            self.ensure_worker()
            log(f"{name}: producing {len(setup):,} setup messages (key, credit) and processing them (not timed)...")
            t = time.monotonic()
            gateway.produce(self.stack.kafka, topic, setup)
            self.stack.cli("wait", "--timeout", "3600", timeout=3700)
            detail["setup_seconds"] = time.monotonic() - t
            log(f"{name}: setup in {detail['setup_seconds']:.1f}s")
        if self.stack.alive():
            self.stack.stop_worker()
        log(f"{name}: producing {len(messages):,} single-record messages (aiokafka, no worker running)...")
        sent, publish_s = gateway.produce(self.stack.kafka, topic, messages)
        detail["publish_rps"] = sent / publish_s
        log(f"{name}: produced in {publish_s:.1f}s ({sent / publish_s:,.0f}/s); starting a worker...")
        started = self.stack.start_worker()
        with HealthSampler(self.stack) as sampler:
            self.stack.cli("wait", "--timeout", "3600", timeout=3700)
            t_wait = time.time()
        health = self.settled_health(len(messages))
        first = health.get("first_batch_at")
        if first is None:
            raise RuntimeError(f"{name}: `billing wait` returned but the worker's /healthz has no first_batch_at")
        processed = int(health.get("stats", {}).get("records", 0))
        if processed < len(messages):
            log(f"warning: {name}: the worker counts {processed} records, fewer than the {len(messages)} produced")
        rps = len(messages) / (t_wait - first)
        rss = max((r for _, r in sampler.rss), default=None)
        cores = sampler.cores_between(first, t_wait)
        detail.update(
            {
                "rps": rps,
                "worker_cores": cores,
                "first_batch_to_queryable_s": t_wait - first,
                "worker_startup_s": first - started.spawned_at,
                "worker_rss_max_mib": rss / 2**20 if rss else None,
                "worker_rss_mib_by_tenth": rss_by_tenth(sampler, len(messages)),
                "worker_stats": health.get("stats", {}),
            }
        )
        self.result[f"{name}_rps"] = rps
        self.result["shapes"][name] = {
            k: detail[k] for k in ("records", "accounts", "distinct_accounts", "publish_rps", "rps", "worker_rss_max_mib", "worker_cores")
        }
        log(
            f"{name}: {len(messages):,} records queryable {t_wait - first:.1f}s after the worker's first batch: {rps:,.0f}/s "
            f"(worker RSS up to {detail['worker_rss_max_mib'] or 0:,.0f} MiB; by tenth of the records "
            f"{detail['worker_rss_mib_by_tenth']}; {_cores_text(cores)})"
        )
        return detail

    def phase_history(self) -> dict[str, Any]:
        """(d) over a long history: N single-record messages from 100,000 accounts over a month of
        event time, all produced first (no worker running), then one worker drains them; its
        /healthz count and RSS sampled every second give throughput and RSS per million."""
        assert self.stack is not None
        from pipeline.settings import load_settings

        n = self.args.history
        shape = gateway.Shape("hist", accounts=100_000, records=n, span_hours=30 * 24, seed=self.args.seed)
        topic = load_settings().input_topic
        self.ensure_worker()
        log(f"history: setup of {shape.accounts:,} accounts (not timed)...")
        gateway.produce(self.stack.kafka, topic, gateway.setup_messages(shape))
        self.stack.cli("wait", "--timeout", "3600", timeout=3700)
        self.stack.stop_worker()
        log(f"history: producing {n:,} single-record messages (no worker running)...")
        sent, publish_s = gateway.produce(self.stack.kafka, topic, gateway.traffic(shape))
        log(f"history: produced {sent:,} in {publish_s:.0f}s ({sent / publish_s:,.0f}/s); starting a worker...")
        self.stack.start_worker()
        base = 0  # a new worker process counts from 0
        with HealthSampler(self.stack, every_s=1.0) as sampler:
            self.stack.cli("wait", "--timeout", "36000", timeout=36100)
            t_wait = time.time()
        health = self.settled_health(n)
        first = health.get("first_batch_at") or t_wait
        marks: list[tuple[float, int]] = [(first, 0)] + [(t, r - base) for t, r in sampler.samples] + [(t_wait, n)]
        per_million = []
        for k in range(1, -(-n // 1_000_000) + 1):
            goal = min(k * 1_000_000, n)
            start_t = first if k == 1 else next(t for t, r in marks if r >= (k - 1) * 1_000_000)
            end_t = next((t for t, r in marks if r >= goal), t_wait)
            rss = [b for t, b in sampler.rss if start_t <= t <= end_t]
            per_million.append(
                {
                    "million": k,
                    "records": goal - (k - 1) * 1_000_000,
                    "rps": (goal - (k - 1) * 1_000_000) / max(end_t - start_t, 1e-9),
                    "rss_max_mib": max(rss) / 2**20 if rss else None,
                }
            )
            log(
                f"history: million {k}: {per_million[-1]['rps']:,.0f} records/s, worker RSS up to "
                f"{_fmt(per_million[-1]['rss_max_mib'], 0)} MiB"
            )
        self.result["history_records"] = n
        self.result["history_per_million"] = per_million
        if len(per_million) >= 2:
            self.result["ratio_history_last_to_first_million"] = per_million[-1]["rps"] / per_million[0]["rps"]
        rss_all = max((b for _, b in sampler.rss), default=0) / 2**20 or None
        self.result["shapes"]["history"] = {
            "records": n,
            "accounts": shape.accounts,
            "publish_rps": sent / publish_s,
            "rps": n / (t_wait - first),
            "worker_rss_max_mib": rss_all,
        }
        return {
            "records": n,
            "publish_rps": sent / publish_s,
            "rps": n / (t_wait - first),
            "per_million": per_million,
            "worker_stats": health.get("stats", {}),
        }

    def phase_raw(self) -> dict[str, Any]:
        assert self.stack is not None
        detail = raw_consumer.run(self.stack.kafka, self.single_record_topic(), self.n)
        if not detail["complete"]:
            raise RuntimeError(f"the raw consumer read only {detail['records']} of {self.n} records")
        self.result["raw_consumer_rps"] = detail["rps"]
        log(f"raw aiokafka consumer: {detail['rps']:,.0f} records/s")
        return detail

    def phase_naive(self) -> dict[str, Any]:
        assert self.stack is not None
        detail = naive_faust.run(
            self.stack.kafka, self.single_record_topic(), self.n, self.workdir / "naive", timeout_s=self.args.naive_timeout
        )
        self.result["naive_faust_rps"] = detail["rps"]
        if detail["rps"] is None:
            raise RuntimeError(f"the naive Faust app saw {detail['records']} records; no rate")
        note = "" if detail["complete"] else f" (incomplete: {detail['records']} of {self.n} records before the deadline)"
        log(f"naive Faust agent: {detail['rps']:,.0f} records/s{note}")
        return detail

    def phase_fold(self) -> dict[str, Any]:
        detail = fold_bench.run(self.lines)
        self.result["fold_rps"] = detail["rps"]
        self.result["parse_rps"] = detail["parse_rps"]
        self.result["parse_and_fold_rps"] = detail["parse_and_fold_rps"]
        log(
            f"pure fold: {detail['rps']:,.0f} records/s over {detail['accounts']} accounts; parse {detail['parse_rps']:,.0f}/s; "
            f"both {detail['parse_and_fold_rps']:,.0f}/s"
        )
        return detail

    def phase_processor(self) -> dict[str, Any]:
        detail = processor_bench.run(self.lines, self.workdir)
        self.result["processor_rps"] = detail["rps"]
        log(
            f"batch processor alone: {detail['rps']:,.0f} records/s ({detail['messages']} messages in batches of "
            f"{detail['batch_messages']}, units of {detail['write_records']} records)"
        )
        return detail

    def phase_rebill(self) -> dict[str, Any]:
        """(e) over the hours of every workload published: rebill replays whole accounts' logs, so
        with publish_and_process's workload it replays both (the CLI's count is reported)."""
        assert self.stack is not None
        self.ensure_worker()
        from pipeline.core.timestamps import US_PER_HOUR, format_ts, hour_start

        workloads = [self.lines, *([self.second_lines] if self.second_lines else [])]
        span = fold_bench.usage_hours([line for lines in workloads for line in lines])
        if span is None:
            raise RuntimeError("no valid usage record in the workload: no range to rebill")
        start, end = format_ts(hour_start(span[0])), format_ts(hour_start(span[1]) + US_PER_HOUR)
        log(f"billing rebill --from {start} --to {end} (default catalog; the hours of {len(workloads)} workload(s))...")
        t = time.monotonic()
        result = self.stack.cli("rebill", "--from", start, "--to", end, "--format", "json", timeout=3600)
        wall = time.monotonic() - t
        match = re.search(r"(\d+) records replayed in ([\d.]+)s \(([\d,]+)/s\)", result.stderr)
        if not match:
            raise RuntimeError(f"no 'N records replayed in S s' line in the rebill's stderr:\n{result.stderr[-2000:]}")
        replayed, seconds = int(match.group(1)), float(match.group(2))
        rate = float(match.group(3).replace(",", ""))
        self.result["rebill_rps"] = rate
        changed = re.search(r"(\d+) lines change", result.stderr)
        log(f"rebill: {replayed} records replayed in {seconds:.1f}s ({rate:,.0f}/s); whole command {wall:.1f}s")
        return {
            "from": start,
            "to": end,
            "workloads": len(workloads),
            "records_replayed": replayed,
            "replay_seconds": seconds,
            "wall_seconds": wall,
            "rps_of_whole_command": replayed / wall,
            "lines_changed": int(changed.group(1)) if changed else None,
        }

    def phase_latency(self) -> dict[str, Any]:
        assert self.stack is not None
        self.ensure_worker()
        detail = latency.run(
            self.stack,
            self.workdir,
            self.args.latency_seconds,
            offered_rps=self.args.offered_rps,
            keyed_accounts=self.latency_accounts or None,
        )
        self.result["latency_p50_s"] = detail["p50_s"]
        self.result["latency_p99_s"] = detail["p99_s"]
        self.result["offered_rps"] = detail["offered_rps"]
        if detail["markers_lost"]:
            log(f"latency: {detail['markers_lost']} of {detail['markers_sent']} markers never became visible")
        log(
            f"latency: p50 {_fmt(detail['p50_s'])} s, p99 {_fmt(detail['p99_s'])} s over {detail['samples']} samples "
            f"at {detail['achieved_offered_rps']:,.0f} records/s offered"
        )
        return detail

    def single_record_topic(self) -> str:
        """The same records, one per Kafka message, as a user's first producer would send them:
        what (a) and (b) read. `billing publish` batches an account's records per message, which
        would make (a) and (b) count messages, not records."""
        if getattr(self, "_single_topic", None):
            return self._single_topic
        from kafka import KafkaProducer

        from pipeline.ingest.broker import ensure_topics

        assert self.stack is not None
        topic = "bench.single-records"
        ensure_topics(self.stack.kafka, {topic: 4})
        log(f"publishing the {self.n} records one per message to {topic} for (a) and (b) (not timed)...")
        producer = KafkaProducer(bootstrap_servers=self.stack.kafka, linger_ms=20, batch_size=512 * 1024)
        for line in self.lines:
            try:
                key = str(json.loads(line).get("account_id", "")).encode()
            except (ValueError, AttributeError):
                key = b""
            producer.send(topic, key=key, value=line if isinstance(line, bytes) else line.encode())
        producer.flush()
        producer.close()
        self._single_topic = topic
        return topic

    # -- report --------------------------------------------------------------------------
    def finish(self, started: float) -> None:
        r = self.result

        def ratio(a: str, b: str) -> float | None:
            return r[a] / r[b] if r[a] is not None and r[b] else None

        r["ratio_pipeline_to_raw"] = ratio("pipeline_rps", "raw_consumer_rps")
        r["ratio_pipeline_to_naive"] = ratio("pipeline_rps", "naive_faust_rps")
        r["ratio_fold_to_raw"] = ratio("fold_rps", "raw_consumer_rps")
        for name in SHAPE_PHASES:
            r[f"ratio_{name}_to_naive"] = ratio(f"{name}_rps", "naive_faust_rps")
            if name in r["shapes"]:
                r["shapes"][name]["ratio_to_naive"] = r[f"ratio_{name}_to_naive"]
        r["ratio_gw_1m_to_gw_100k"] = ratio("gw_1m_rps", "gw_100k_rps")
        if r["pipeline_rps"] is not None:
            r["shapes"]["publish_8"] = {
                "records": self.n,
                "accounts": 8,
                "publish_rps": r["publish_rate"],
                "rps": r["pipeline_rps"],
                "ratio_to_naive": r["ratio_pipeline_to_naive"],
                "worker_rss_max_mib": self.details.get("pipeline", {}).get("worker_rss_max_mib"),
            }
        rss = [shape.get("worker_rss_max_mib") for shape in r["shapes"].values() if shape.get("worker_rss_max_mib")]
        r["worker_rss_max_mib"] = max(rss) if rss else None
        targets = {}
        for key, (op, threshold, text) in TARGETS.items():
            value = r[key]
            met = None if value is None else (value >= threshold if op == ">=" else value < threshold)
            targets[key] = {"target": f"{op} {threshold}", "met": met, "what": text}
        r["targets"] = targets
        r["environment"] = _environment()
        r["details"] = self.details
        r["errors"] = self.errors
        r["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
        r["duration_s"] = round(time.time() - started, 1)


def _cli_rate(stderr: str) -> float | None:
    """The last "published: n/N (R/s)" progress figure of `billing publish`."""
    rates = re.findall(r"published: \d+/\d+ \(([\d,]+)/s\)", stderr)
    return float(rates[-1].replace(",", "")) if rates else None


def _drain_rate(processed: list[tuple[float, int]], t_pub: float, at_pub_end: int, n: int) -> float | None:
    """Records/s while the worker was behind the publisher: from publish end until it had read all
    n (None when the backlog at publish end was too small to say)."""
    after = [(t, r) for t, r in processed if t > t_pub]
    if n - at_pub_end < max(10_000, n // 20) or len(after) < 2:
        return None
    t_end, r_end = next(((t, r) for t, r in after if r >= n), after[-1])
    return (r_end - at_pub_end) / max(t_end - t_pub, 1e-9)


def _cores_text(cores: dict[str, float] | None) -> str:
    """The worker's cores while it drained: Python's threads share one lock, so near 1.0 they
    are the limit whatever the engine leaves of the other core."""
    if cores is None:
        return "worker cores not sampled"
    return (
        f"worker busy {cores['all']:.2f} cores: Python threads {cores['python_threads']:.2f}, engine threads {cores['engine_threads']:.2f}"
    )


def rss_by_tenth(sampler: HealthSampler, records: int) -> list[int | None]:
    """The worker's largest RSS (MiB) while it processed each tenth of a shape's records: whether
    memory grows with the distinct accounts seen or stops at a plateau. A tenth runs from the last
    count below its start to the first count at its end (a batch can span several tenths)."""
    tenths: list[int | None] = []
    for k in range(1, 11):
        low, high = records * (k - 1) // 10, records * k // 10
        start = max((t for t, n in sampler.samples if n <= low), default=None)
        end = next((t for t, n in sampler.samples if n >= high), None)
        inside = [b for t, b in sampler.rss if start is not None and end is not None and start <= t <= end]
        tenths.append(round(max(inside) / 2**20) if inside else None)
    return tenths


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    for module in ("faust", "aiokafka", "kafka", "chdb", "clickhouse_connect"):
        try:
            env[module] = getattr(__import__(module), "__version__", "?")
        except Exception:
            env[module] = None
    return env


def render_table(r: dict[str, Any]) -> str:
    def rps(v: Any) -> str:
        return "-" if v is None else f"{v:,.0f}/s"

    def x(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}x"

    def s(v: Any) -> str:
        return "-" if v is None else f"{v:.3f} s"

    d = r["details"]
    rows = [
        ("records", f"{r['records']:,}", ""),
        ("publish rate (billing publish)", rps(r["publish_rate"]), "into the topic, no worker running"),
        ("(a) raw aiokafka consumer", rps(r["raw_consumer_rps"]), "the ceiling for Python here"),
        ("(b) naive Faust agent", rps(r["naive_faust_rps"]), "Record + table update per event"),
        ("(c) pure fold, in memory", rps(r["fold_rps"]), "apply over parsed records; target >= 200,000/s"),
        ("    parse and validate", rps(r["parse_rps"]), "bytes -> records, apart from (c)"),
        ("    parse and fold", rps(r["parse_and_fold_rps"]), "both: what (c) measured before 2026-11-29"),
        ("(d) whole pipeline, one worker", rps(r["pipeline_rps"]), "published records: first batch -> queryable; target >= 20,000/s"),
        ("    batch processor alone", rps(r["processor_rps"]), "the worker's own work, no Kafka or Faust, in the bench process"),
        ("    worker startup", s(r["worker_startup_s"]), "process start -> first batch (group join); not in (d)"),
        ("publish and process at once", rps(r["publish_and_process_rps"]), "fresh records: publish start -> queryable, warm worker"),
        (
            "    worker drain rate",
            rps(d.get("publish_and_process", {}).get("worker_drain_rps")),
            "while behind the publisher, from /healthz",
        ),
        ("(e) rebill", rps(r["rebill_rps"]), "records replayed / s, as the CLI reports"),
        ("(d)/(a)", x(r["ratio_pipeline_to_raw"]), ""),
        ("(d)/(b)", x(r["ratio_pipeline_to_naive"]), "target >= 10x"),
        ("(c)/(a)", x(r["ratio_fold_to_raw"]), ""),
        *[
            (
                f"{name}: {shape['records']:,} records, {shape['accounts']:,} accounts",
                rps(shape.get("rps")),
                f"{x(shape.get('ratio_to_naive'))} (b); produced at {rps(shape.get('publish_rps'))}; worker RSS up to "
                f"{_fmt(shape.get('worker_rss_max_mib'), 0)} MiB; {_cores_text(shape.get('worker_cores'))}",
            )
            for name, shape in r["shapes"].items()
        ],
        ("latency p50", s(r["latency_p50_s"]), f"publish -> queryable at {rps(r['offered_rps'])} offered"),
        ("latency p99", s(r["latency_p99_s"]), "target < 1 s"),
    ]
    width = max(len(a) for a, _, _ in rows)
    out = [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    out.append("")
    for key, t in r["targets"].items():
        verdict = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
        out.append(f"target {t['what']}: {verdict}")
    out.append("")
    out.append(f"{r['cpu_count']} CPUs, Python {r['python_version']}; load average now {r['environment']['loadavg']}")
    out.append(f"core: {r['core']} (bench), {r['worker_core'] or '-'} (worker)")
    out.append(
        f"machine speed: {_fmt(r['machine_speed_start'], 0)} M loop steps/s before, {_fmt(r['machine_speed_end'], 0)} after "
        "(bench/calibrate.py: compare runs only when these agree)"
    )
    for name, detail in d.items():
        cpu = detail.get("cpu")
        if cpu:
            out.append(f"  {name:<19} cores busy {cpu['cores_busy']:.2f} (bench {cpu['cores_ours']:.2f}, others {cpu['cores_others']:.2f})")
    for name, error in r["errors"].items():
        out.append(f"FAILED {name}: {error}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted; every process the bench started is stopped")
        return 130
    if args.json:
        print(json.dumps(bench.result, default=str))
    else:
        print(render_table(bench.result))
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
