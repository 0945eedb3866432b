"""Child processes the bench starts, and how it makes sure they all stop."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
try:  # loaded here, not in the child: dlopen after fork in a threaded process can deadlock
    _libc: Any = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None
_started: list[subprocess.Popen[bytes]] = []


def log(message: str) -> None:
    """Progress on stderr (stdout is reserved for the report / JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def _die_with_us() -> None:  # runs in the child, before exec
    os.setsid()  # its own process group: a Ctrl-C on our terminal does not reach it; we stop it in order
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], *, log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A long-lived child: own process group, SIGTERM if the bench dies, output to a log file."""
    out = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_us,
        )
    finally:
        out.close()
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes] | None, first: int = signal.SIGINT, grace_s: float = 30.0) -> int | None:
    """Signal the child's process group (first SIGINT/SIGTERM, then SIGKILL) and reap it."""
    if proc is None:
        return None
    if proc.poll() is None:
        _signal_group(proc, first)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} did not stop within {grace_s:g}s after signal {first}; killing it")
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    else:
        _signal_group(proc, signal.SIGKILL)  # leftovers of its group, if any (the group id is its pid)
    if proc in _started:
        _started.remove(proc)
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def stop_all() -> None:
    """Last line of defence: whatever is still running, newest first."""
    for proc in reversed(list(_started)):
        try:
            stop(proc, signal.SIGTERM, grace_s=15.0)
        except Exception as exc:  # keep stopping the others
            log(f"could not stop pid {proc.pid}: {exc}")


def run(argv: list[str], *, cwd: Path, timeout: float, env: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """A short-lived child (publish, wait, rebill), killed with its group on timeout or Ctrl-C."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=_die_with_us,
    )
    _started.append(proc)  # type: ignore[arg-type]
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop(proc, signal.SIGTERM, grace_s=5.0)  # type: ignore[arg-type]
        raise
    finally:
        if proc in _started:
            _started.remove(proc)  # type: ignore[arg-type]
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# -- CPU accounting: how much of the machine other people used during a phase -----------------

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_system_s() -> float:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _HZ


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds including reaped children)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
        table[int(name)] = (ppid, (utime + stime + cutime + cstime) / _HZ)
    return table


def cpu_snapshot() -> tuple[float, float, float]:
    """(monotonic time, busy CPU seconds of the machine, CPU seconds of the bench and its descendants)."""
    try:
        busy = _busy_system_s()
        table = _proc_table()
    except OSError:
        return time.monotonic(), 0.0, 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    ours = 0.0
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table:
            ours += table[pid][1]
        todo.extend(children.get(pid, ()))
    return time.monotonic(), busy, ours


def cpu_delta(before: tuple[float, float, float], after: tuple[float, float, float]) -> dict[str, float]:
    """Average cores busy over the interval: all, ours, others (other users' tests, ...)."""
    seconds = max(after[0] - before[0], 1e-9)
    total = (after[1] - before[1]) / seconds
    ours = (after[2] - before[2]) / seconds
    return {"cores_busy": round(total, 2), "cores_ours": round(ours, 2), "cores_others": round(max(total - ours, 0.0), 2)}


# -- a process's CPU by kind of thread: Python's, and the embedded engine's ------------------


def _stat_fields(text: str) -> tuple[str, list[str]]:
    """(thread name, the fields after it) of a /proc/.../stat line; the name may hold spaces and ')'."""
    return text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :].split()


def thread_cpu(pid: int, proc: Path = Path("/proc")) -> tuple[float, float] | None:
    """CPU seconds of a process's Python threads and of its other threads, or None once it is gone.

    Threads inherit the process's name unless they set their own: the worker's Python threads
    (the event loop, the folding, reader and sink threads, Faust's consumer thread) keep it, while
    the embedded engine names each of its threads (QueryPipelineEx, MergeMutate, ThreadPool...).
    The first sum is what Python's lock allows at most one core of: when it nears 1.0 core, the
    worker is bound by Python's lock, whatever the other core does (docs/performance.md)."""
    try:
        main_name, _ = _stat_fields((proc / str(pid) / "stat").read_text())
        python = other = 0.0
        for task in (proc / str(pid) / "task").iterdir():
            try:
                name, fields = _stat_fields((task / "stat").read_text())
            except OSError:  # the thread ended meanwhile
                continue
            seconds = (int(fields[11]) + int(fields[12])) / _HZ
            if name == main_name:
                python += seconds
            else:
                other += seconds
    except OSError:
        return None
    return python, other
