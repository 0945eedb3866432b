"""Settings are checked in one place: a bad value is refused with a message that names the setting
and the values it accepts, and the CLI exits 2 (CONTRACT: bad input)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import commands
from pipeline.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BILLING_") and name != "BILLING_PURE_PYTHON":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "name, value, accepted",
    [
        ("BILLING_PARTITIONS", "abc", "a whole number from 1 to 10000"),
        ("BILLING_PARTITIONS", "0", "a whole number from 1 to 10000"),
        ("BILLING_BATCH_SIZE", "-5", "a whole number from 1 up"),
        ("BILLING_WRITE_RECORDS", "0", "a whole number from 1 up"),
        ("BILLING_INSERT_LANES", "0", "a whole number from 1 to 16"),
        ("BILLING_API_PORT", "70000", "a whole number from 0 to 65535"),
        ("BILLING_AUTO_TICK", "maybe", "one of 1, true, yes, on, 0, false, no, off"),
        ("BILLING_READS_BESIDE_WRITES", "sometimes", "one of 1, true, yes, on, 0, false, no, off"),
        ("BILLING_WARM_START", "lukewarm", "one of 1, true, yes, on, 0, false, no, off"),
        ("BILLING_CLICKHOUSE", "foo://bar", "chdb://PATH or http(s)://"),
        ("BILLING_CLICKHOUSE", "http:///db", "chdb://PATH or http(s)://"),
        ("BILLING_KAFKA", "kafka://broker:9092", "host:port"),
        ("BILLING_KAFKA", "broker:abc", "host:port"),
        ("BILLING_TOPIC_PREFIX", "bad prefix", "letters, digits"),
        ("BILLING_LOG_FORMAT", "xml", "one of text, json"),
    ],
)
def test_a_bad_value_names_the_setting_and_what_it_accepts(monkeypatch: pytest.MonkeyPatch, name: str, value: str, accepted: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value).startswith(f"{name}={value!r} is not valid: expected ") and accepted in str(err.value)


def test_the_cli_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BILLING_PARTITIONS", "abc")
    assert commands.main(["bills"]) == 2
    err = capsys.readouterr().err
    assert err == "billing: BILLING_PARTITIONS='abc' is not valid: expected a whole number from 1 to 10000\n"


def test_a_bad_flag_is_named_as_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(["bills", "--clickhouse", "foo://bar"]) == 2
    assert capsys.readouterr().err.startswith("billing: --clickhouse='foo://bar' is not valid")


def test_a_password_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_CLICKHOUSE", "ftp://user:s3cret@host/db")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "s3cret" not in str(err.value)


def test_good_values_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert load_settings() == Settings()
    monkeypatch.setenv("BILLING_PARTITIONS", " 8 ")
    monkeypatch.setenv("BILLING_AUTO_TICK", "OFF")
    monkeypatch.setenv("BILLING_CLICKHOUSE", "https://u:p@ch.example:8443/billing")
    monkeypatch.setenv("BILLING_KAFKA", "k1:9092,k2:9093")
    monkeypatch.setenv("BILLING_LOG_FORMAT", "JSON")
    monkeypatch.setenv("BILLING_WARM_START", "0")
    s = load_settings(data_dir=str(tmp_path))
    assert (s.partitions, s.auto_tick, s.kafka, s.log_format, s.warm_start) == (8, False, "k1:9092,k2:9093", "json", False)
    assert load_settings(clickhouse=f"chdb://{tmp_path}/ch").clickhouse == f"chdb://{tmp_path}/ch"  # the flag wins
    assert s.with_(partitions=2).partitions == 2 and s.partitions == 8  # still a frozen dataclass


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SettingsError, match="--data-dir=.* expected a directory"):
        load_settings(data_dir=str(path))
