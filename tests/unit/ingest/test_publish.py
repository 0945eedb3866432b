"""`billing publish` without a broker: what it groups and how, what it says, its exit status, and
the worker's reading of the headers it puts on a line it could not read; `--account ""`."""

from __future__ import annotations

import io
import os

import pytest

from pipeline.batch.framing import split_message
from pipeline.batch.processor import _origin, message_headers
from pipeline.cli import commands
from pipeline.cli.progress import Progress, write_or_drop
from pipeline.ingest.publish import Batcher, PublishReport, origin_headers, tell


def test_a_group_carries_its_first_line_and_how_many_records_it_holds() -> None:
    sent: list[tuple[bytes, bytes, int, int, list]] = []
    batcher = Batcher(lambda *args: sent.append(args))
    batcher.add(b"a", b'{"n":1}', 1)
    batcher.add(b"b", b'{"n":2}', 2)
    batcher.add(b"a", b'{"n":3}', 4)
    batcher.flush()
    assert [(k, split_message(v), first, n) for k, v, first, n, _ in sent] == [
        (b"a", [b'{"n":1}', b'{"n":3}'], 1, 2),
        (b"b", [b'{"n":2}'], 2, 1),
    ]


def test_a_line_sent_alone_follows_the_records_of_its_account_read_before_it() -> None:
    sent: list[tuple[bytes, bytes, int, int, list]] = []
    batcher = Batcher(lambda *args: sent.append(args))
    batcher.add(b"a", b'{"n":1}', 1)
    batcher.add_alone(b"a", b"\x1e{oops", 2, origin_headers(2, "f.jsonl"))
    batcher.add(b"a", b'{"n":3}', 3)
    batcher.flush()
    assert [(v, first, n) for _, v, first, n, _ in sent] == [(b'{"n":1}', 1, 1), (b"\x1e{oops", 2, 1), (b'{"n":3}', 3, 1)]
    assert sent[1][4] == [("billing-line", b"2"), ("billing-source", b"f.jsonl")]


def test_the_worker_names_the_line_of_a_record_publish_could_not_read() -> None:
    assert _origin(message_headers(origin_headers(12, "usage.jsonl"))) == "line 12 of usage.jsonl"
    assert _origin(message_headers(origin_headers(7, "-", 1_048_576))) == "line 7 of -; 1048576 bytes as read, kept cut short"
    assert _origin(message_headers({"billing-line": b"3", "billing-source": b"x"})) == "line 3 of x"
    # any producer can set headers: anything else names no line
    assert _origin(message_headers(None)) == ""
    assert _origin(message_headers([("billing-line", b"\xd9\xa3"), ("billing-source", b"x")])) == ""  # Arabic-Indic 3
    assert _origin(message_headers([("billing-line", None), ("other", b"1")])) == ""


def reported(report: PublishReport) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = tell(report, out, err)
    return status, out.getvalue(), err.getvalue()


def test_records_not_sent_fail_the_command_with_the_line_to_publish_again_from() -> None:
    report = PublishReport()
    report.sent.update({"usage": 8, "credit.recharge": 2})
    report.failed(3, 40, "KafkaTimeoutError: gone")
    report.failed(2, 17, "KafkaTimeoutError: gone")
    status, out, err = reported(report)
    assert status == 1
    assert out.startswith("published 5 of 10 records")
    assert "5 of 10 records were NOT sent" in err and "from line 17" in err and "KafkaTimeoutError" in err


def test_lines_kept_as_rejected_records_are_named_and_do_not_fail_the_command() -> None:
    report = PublishReport()
    report.sent.update({"usage": 3, "invalid": 25})
    report.bad_lines.extend((n, "not JSON (x)") for n in range(1, 26))
    status, out, err = reported(report)
    assert status == 0 and out.startswith("published 28 records")
    assert "line 20: not JSON (x); published as a rejected record" in err and "line 21:" not in err
    assert "... and 5 more" in err and "25 lines are not records" in err


class Gone(io.StringIO):
    """A terminal whose reader has left."""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_that_cannot_be_written_changes_neither_the_outcome_nor_the_status() -> None:
    report = PublishReport()
    report.sent["usage"] = 4
    report.failed(1, 3, "boom")
    assert tell(report, Gone(), None) == 1
    assert tell(PublishReport(), Gone(), Gone()) == 0
    assert write_or_drop(None, "x") is False


def test_a_stream_whose_reader_left_is_pointed_at_dev_null() -> None:
    """So that the interpreter's last flush at exit does not fail (exit status 120)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    try:
        assert write_or_drop(stream, "x" * 100_000) is False
        assert write_or_drop(stream, "more\n") is True  # /dev/null now
    finally:
        stream.close()


def test_progress_goes_on_without_its_stream() -> None:
    progress = Progress("published", 10, stream=Gone(), every_s=0)
    progress.update(1)
    progress.started -= 60
    progress._last -= 60  # a line is due now (a pipe gets one every 5 s at most)
    progress.update(2)  # no exception: the line is a courtesy
    assert progress.count == 2 and progress.stream is None


@pytest.mark.parametrize(
    "argv",
    [
        ["bills", "--account", ""],
        ["rejected", "--account", ""],
        ["settlements", "--account", ""],
        ["account", ""],
        ["rebill", "--from", "2024-06-07T00:00:00+08:00", "--to", "2024-06-08T00:00:00+08:00", "--account", ""],
    ],
)
def test_an_empty_account_is_bad_usage_not_every_account(argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert commands.main([*argv, "--data-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "account" in captured.err
