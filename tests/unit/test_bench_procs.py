"""bench/procs.thread_cpu: a worker's CPU split between its Python threads and its engine's, read
from /proc, so that the bench can say when Python's lock is the limit."""

from __future__ import annotations

import os
from pathlib import Path

from bench.procs import _HZ, thread_cpu


def _stat(name: str, utime: int, stime: int) -> str:
    # fields after the name: state, ppid, pgrp, session, tty, tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime, ...
    return f"4242 ({name}) S 1 4242 4242 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0 9 0 100 0 0\n"


def _process(root: Path, threads: dict[int, tuple[str, int, int]]) -> None:
    (root / "4242" / "task").mkdir(parents=True)
    (root / "4242" / "stat").write_text(_stat(threads[4242][0], 0, 0))
    for tid, (name, utime, stime) in threads.items():
        (root / "4242" / "task" / str(tid)).mkdir()
        (root / "4242" / "task" / str(tid) / "stat").write_text(_stat(name, utime, stime))


def test_threads_named_as_the_process_are_pythons_and_every_other_name_is_the_engines(tmp_path: Path) -> None:
    _process(
        tmp_path,
        {
            4242: ("python", 3 * _HZ, _HZ),  # the event loop
            4243: ("python", 2 * _HZ, 0),  # the folding thread
            4244: ("QueryPipelineEx", _HZ, _HZ),
            4245: ("Merge (x) Mutate", 0, _HZ // 2),  # a name with spaces and a parenthesis
        },
    )
    assert thread_cpu(4242, tmp_path) == (6.0, 2.5)


def test_a_process_that_is_gone_gives_nothing(tmp_path: Path) -> None:
    assert thread_cpu(4242, tmp_path) is None


def test_this_process_burns_cpu_on_its_python_threads() -> None:
    before = thread_cpu(os.getpid())
    assert before is not None
    deadline = os.times().user + 0.2
    while os.times().user < deadline:  # 0.2 s of this thread's CPU
        pass
    after = thread_cpu(os.getpid())
    assert after is not None and after[0] - before[0] >= 0.15
