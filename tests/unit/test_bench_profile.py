"""The py-spy raw-profile reader of `python -m bench --profile`: folding and counting."""

from __future__ import annotations

from bench.profile import function_of, parse_lines, render

RAW = [
    'process 7:"python -m pipeline worker";main (/repo/x.py:3);work (/venv/lib/python3.11/site-packages/lib/a.py:10);'
    "leaf (/usr/lib/python3.11/json/decoder.py:5) 6",
    'process 7:"python -m pipeline worker";main (/repo/x.py:4);work (/venv/lib/python3.11/site-packages/lib/a.py:12) 3',
    'process 7:"python -m pipeline worker";main (/repo/x.py:4);main (/repo/x.py:9) 1',  # recursion
    "_find_and_load (<frozen importlib._bootstrap>:1176) 2",
    "not a sample line",
]


def test_frames_fold_per_function_without_line_or_library_prefix() -> None:
    assert function_of("work (/venv/lib/python3.11/site-packages/lib/a.py:10)") == "work (lib/a.py)"
    assert function_of("leaf (/usr/lib/python3.11/json/decoder.py:5)") == "leaf (json/decoder.py)"
    assert function_of("<module> (<string>:1)") == "<module> (<string>)"


def test_self_and_cumulative_samples() -> None:
    profile = parse_lines(RAW)
    assert profile.samples == 12
    assert profile.in_imports == 2
    assert profile.self_samples["leaf (json/decoder.py)"] == 6
    assert profile.self_samples["work (lib/a.py)"] == 3
    assert profile.cumulative["work (lib/a.py)"] == 9
    # a recursing function counts once per stack: never more samples than there are
    assert profile.cumulative["main (/repo/x.py)"] == 10
    assert not any(name.startswith("process ") for name in profile.cumulative)


def test_render_lists_the_top_functions_first() -> None:
    text = render(parse_lines(RAW), top=2, rate_hz=200)
    self_part = text.split("by cumulative")[0]
    assert self_part.index("leaf (json/decoder.py)") < self_part.index("work (lib/a.py)")
    assert "_find_and_load" not in self_part  # top 2 only
