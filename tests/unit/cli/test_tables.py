"""What the query commands print: a table that fits the terminal (numbers right-aligned, long ids
shortened, columns left out and said so when it cannot fit), and JSON/CSV with every value."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from pipeline.cli import commands, tables
from pipeline.store import queries

ANSI = re.compile(r"\x1b\[[0-9;]*m")
KEY = "sk-36ceb99cb50e215f3f5055ce"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def bill(account: str, item: str, requests: int, amount: str) -> dict[str, object]:
    return {
        "account_id": account,
        "hour": "2024-09-18T03:00:00+08:00",
        "api_key_id": KEY,
        "item": item,
        "requests": requests,
        "input_tokens": 133200,
        "output_tokens": 3047,
        "free_tokens": 4379,
        "billed_input_tokens": 128821,
        "billed_output_tokens": 0,
        "quantity": 0,
        "amount": amount,
    }


ROWS = [bill("9922177186219009", "xingchen-plus", 3, "0.000000"), bill("99", "plugin:digital_human_voice", 13, "1234.500000")]


def table(width: int, rows: list[dict[str, object]] = ROWS) -> list[str]:
    out = Terminal()
    tables.emit(rows, "table", commands.BILL_COLUMNS, out=out, width=width, optional=commands.BILL_OPTIONAL)
    return ANSI.sub("", out.getvalue()).splitlines()


@pytest.mark.parametrize("width", [80, 100, 140, 220])
def test_the_table_fits_the_terminal_and_keeps_every_amount_whole(width: int, capsys: pytest.CaptureFixture[str]) -> None:
    lines = table(width)
    assert len(lines) == 3  # header and one line per row: nothing wraps
    assert all(len(line) <= width for line in lines)
    assert "1234.500000" in lines[2] and "0.000000" in lines[1]  # never cut
    hidden = capsys.readouterr().err
    if width <= 100:
        assert hidden.startswith(f"(not shown to fit {width} columns: free_tokens,"), hidden
    if width >= 220:
        assert hidden == ""


def test_numbers_are_right_aligned_and_ids_shortened() -> None:
    header, first, second = table(220)
    end = header.index("amount") + len("amount")
    assert first[:end].endswith("0.000000") and second[:end].endswith("1234.500000")
    assert KEY not in first and "sk-36c…f5055ce" in first
    req = header.index("req") + len("req")
    assert first[:req].endswith(" 3") and second[:req].endswith("13")


def test_json_and_csv_keep_every_value_in_full() -> None:
    out = io.StringIO()
    tables.emit(ROWS, "json", commands.BILL_COLUMNS, out=out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == ROWS
    out = io.StringIO()
    tables.emit(ROWS, "csv", commands.BILL_COLUMNS, out=out)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[0]["api_key_id"] == KEY and parsed[1]["amount"] == "1234.500000"


def test_a_table_to_a_pipe_is_never_cut() -> None:
    out = io.StringIO()
    tables.emit(ROWS, "table", commands.BILL_COLUMNS, out=out, width=80)
    lines = out.getvalue().splitlines()
    assert KEY in lines[1] and lines[0].split() == list(commands.BILL_COLUMNS)
    assert all(line == line.rstrip() for line in lines)


def test_csv_with_no_rows_still_has_its_header() -> None:
    out = io.StringIO()
    tables.emit([], "csv", commands.SETTLEMENT_COLUMNS, out=out)
    assert out.getvalue().strip() == ",".join(commands.SETTLEMENT_COLUMNS)


def test_rejected_rows_carry_the_record_as_an_object_and_its_timestamp() -> None:
    record = {"account_id": "a", "timestamp": "2024-07-01T02:00:01Z", "event_id": "e1", "model": 5}
    row = queries.with_record(
        {
            "event_id": "e1",
            "account_id": "a",
            "reason": "invalid_schema",
            "detail": "model",
            "kind": "usage",
            "timestamp": "",
            "record": json.dumps(record),
        }
    )
    assert row["record"] == record and json.loads(row["record_text"]) == record
    assert row["timestamp"] == "2024-07-01T10:00:01+08:00"
    naive = queries.with_record({"timestamp": "", "record": json.dumps({**record, "timestamp": "2024-07-01T10:00:01"})})
    assert naive["timestamp"] == ""  # not RFC 3339: the record shows it as sent
    for text in ("[" * 100_000 + "]" * 100_000, '{"a": NaN}', '{"n": ' + "9" * 5000 + "}"):
        row = queries.with_record({"timestamp": "", "record": text})
        assert row["record"] == text and json.loads(json.dumps(row))["record_text"] == text
    out = Terminal()
    tables.emit([{"detail": "bad \ud800 surrogate", "record": {"k": "\udfff"}}], "table", out=out, width=80)
    assert "\\ud800" in out.getvalue()
    for hostile in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2024-13-45T99:99:99Z", 12):
        assert queries.with_record({"timestamp": "", "record": json.dumps({"timestamp": hostile})})["timestamp"] == ""


def test_time_order_and_the_limit_keeps_the_latest(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"hour": f"2024-07-01T{h:02d}:00:00+08:00", "account_id": a} for h in (1, 3, 2) for a in ("b", "a")]
    ordered = commands.in_time_order(rows, "hour", "account_id")
    assert [(r["hour"][11:13], r["account_id"]) for r in ordered] == [
        ("01", "a"),
        ("01", "b"),
        ("02", "a"),
        ("02", "b"),
        ("03", "a"),
        ("03", "b"),
    ]
    args = commands.build_parser().parse_args(["bills", "--format", "json", "--limit", "2"])
    commands.emit_limited(ordered, args, None)
    captured = capsys.readouterr()
    assert [json.loads(line)["hour"][11:13] for line in captured.out.splitlines()] == ["03", "03"]
    assert "showing the last 2 of 6 rows" in captured.err


def test_every_command_and_option_has_help_and_an_example() -> None:
    parser = commands.build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, command in sub.choices.items():
        assert command.epilog and "billing " in command.epilog, f"{name}: no example"
        for action in command._actions:
            assert action.help, f"billing {name} {action.option_strings or action.dest}: no help"
    assert parser.epilog


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        commands.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("billing 0.")


def test_bills_range_in_the_wrong_order_exits_2_like_rebill(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["bills"], ["rebill", "--dry-run"]):
        code = commands.main([*command, "--from", "2024-07-02T00:00:00+08:00", "--to", "2024-07-01T00:00:00+08:00"])
        assert code == 2 and capsys.readouterr().err == "billing: --to must be after --from\n"


def test_an_unknown_reason_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        commands.main(["rejected", "--reason", "bogus"])
    assert exit_.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_reasons_lists_every_reason_with_its_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(["reasons", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["reason"] for r in rows][:3] == ["invalid_schema", "unauthorized", "out_of_range"]
    assert all(r["meaning"] for r in rows)
