"""Credentials come from the URL or env and never show up in messages or logs."""

from __future__ import annotations

import logging

import pytest

from pipeline.cli.commands import main
from pipeline.settings import load_settings, redact
from pipeline.store.chclient import ClickHouseUnavailable, connect

URL = "http://billing:s3cret-pw@127.0.0.1:9/billing"  # port 9 (discard): nothing answers


def test_redact_hides_the_password_only() -> None:
    assert redact(URL) == "http://billing:***@127.0.0.1:9/billing"
    assert redact("chdb:///data/clickhouse") == "chdb:///data/clickhouse"


def test_unreachable_clickhouse_error_names_the_server_not_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ClickHouseUnavailable) as failure:
        connect(URL)
    assert "127.0.0.1:9" in str(failure.value)
    assert "s3cret" not in str(failure.value)
    assert "s3cret" not in caplog.text


def test_cli_failure_line_has_no_password(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_CLICKHOUSE", URL)
    assert load_settings().clickhouse == URL
    code = main(["bills"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("billing:")
    assert "s3cret" not in err
