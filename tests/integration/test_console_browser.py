"""The management console in a real headless Chromium (Debian's, driven through its chromedriver;
no browser is ever downloaded), served by the running `billing up`.

Pages load without console errors, the charts draw with data, and the figures shown equal what
`billing account`, `billing bills` and the statement's CSV say for the same account and range.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from pipeline.demo.workload import generate, write_jsonl
from pipeline.runtime import read_runtime
from tests.integration.stack import Stack
from tests.integration.test_pipeline import accounts_of

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOSTILE = '<img src=x onerror="window.pwned=1">'  # an account id is any string: the pages must show it as text
SCREENSHOTS = os.environ.get("BILLING_CONSOLE_SCREENSHOTS")  # a directory: save the pages' pictures there


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,2200",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def console(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lines = generate(4000, seed=2019, accounts=6)
    path = tmp_path_factory.mktemp("console") / "workload.jsonl"
    hostile = {"type": "credit.recharge", "account_id": HOSTILE, "timestamp": "2024-09-18T01:00:00+08:00", "amount": "5"}
    write_jsonl(path, [*lines, json.dumps(hostile)])
    stack.publish(path)
    stack.wait()
    runtime = read_runtime(stack.data_dir)
    assert runtime is not None
    return {"base": runtime.api, "accounts": sorted(accounts_of(lines) - {HOSTILE})}


def load(browser: Any, url: str) -> list[dict[str, Any]]:
    """Open a page, wait until its script says it has drawn, return the console's messages."""
    browser.get_log("browser")  # drop what earlier pages said
    browser.get(url)
    deadline = time.monotonic() + 60
    while browser.execute_script("return document.body.dataset.loaded") != "1":
        error = browser.execute_script("const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : null")
        assert error is None, f"{url}: the page says {error}"
        assert time.monotonic() < deadline, f"{url} did not finish loading"
        time.sleep(0.1)
    time.sleep(0.3)  # let ECharts finish its first frame
    return browser.get_log("browser")


def errors(messages: list[dict[str, Any]]) -> list[str]:
    return [m["message"] for m in messages if m["level"] in ("SEVERE", "ERROR")]


def text(browser: Any, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').textContent").strip()


def chart_series(browser: Any, chart_id: str) -> list[dict[str, Any]]:
    """The series an ECharts instance drew, and whether its canvas has pixels."""
    return browser.execute_script(f"""
        const chart = window.consoleCharts['{chart_id}'];
        const canvas = document.querySelector('#{chart_id} canvas');
        if (!chart || !canvas || canvas.width === 0) return null;
        return chart.getOption().series.map(s => ({{name: s.name, data: s.data}}));
    """)


def table_rows(browser: Any, container_id: str) -> list[list[str]]:
    return browser.execute_script(f"""
        return [...document.querySelectorAll('#{container_id} tbody tr')].map(tr => [...tr.children].map(td => td.textContent));
    """)


def shoot(browser: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1400, min(max(height + 40, 900), 4000))
        browser.save_screenshot(str(Path(SCREENSHOTS) / f"console-{name}.png"))
        browser.set_window_size(1400, 2200)


def test_operator_page(stack: Stack, browser: Any, console: dict[str, Any]) -> None:
    assert errors(load(browser, console["base"] + "/")) == []  # / sends people to the console
    assert browser.current_url.startswith(console["base"] + "/console")
    start, end = browser.execute_script("return [document.getElementById('from').value, document.getElementById('to').value]")
    bills = stack.bills("--from", start, "--to", end)
    assert bills, "the default range shows lines"
    assert Decimal(text(browser, "kpi-amount")) == sum(Decimal(b["amount"]) for b in bills)
    assert int(text(browser, "kpi-calls")) == sum(b["requests"] for b in bills if not b["item"].startswith("plugin:"))
    revenue = chart_series(browser, "chart-revenue")
    assert revenue is not None and [s["name"] for s in revenue] == ["amount (CNY)", "calls"]
    assert sum(revenue[1]["data"]) == int(text(browser, "kpi-calls"))
    assert abs(sum(revenue[0]["data"]) - float(text(browser, "kpi-amount"))) < 0.01
    # the top accounts of the range (from the per account-hour totals) are the bills' sums per account
    per_account: dict[str, list[Any]] = {}
    for b in bills:
        acc = per_account.setdefault(b["account_id"], [0, 0, Decimal(0)])
        acc[0] += 0 if b["item"].startswith("plugin:") else b["requests"]
        acc[1] += b["input_tokens"] + b["output_tokens"]
        acc[2] += Decimal(b["amount"])
    top = sorted(per_account.items(), key=lambda kv: (-kv[1][2], kv[0]))[:20]
    assert [[r[0], int(r[1]), int(r[2]), Decimal(r[3])] for r in table_rows(browser, "top-accounts")] == [
        [acc, *figures] for acc, figures in top
    ]
    summaries = stack.json_lines("sql", "SELECT count() AS n, countIf(status = 'arrears') AS arrears FROM account_balances")[0]
    assert [int(text(browser, "kpi-accounts")), int(text(browser, "kpi-arrears"))] == [summaries["n"], summaries["arrears"]]
    reasons = {row[0]: int(row[1]) for row in table_rows(browser, "rejection-reasons")}
    listed: dict[str, int] = {}
    for r in stack.rejected():
        listed[r["reason"]] = listed.get(r["reason"], 0) + 1
    assert reasons == listed
    assert sum(chart_series(browser, "chart-rejections")[0]["data"]) == sum(listed.values())
    ids = [row[0] for row in table_rows(browser, "accounts")]
    assert set(console["accounts"]) | {HOSTILE} <= set(ids)
    shoot(browser, "operator")
    assert browser.execute_script("return [window.pwned, document.querySelectorAll('img').length]") == [None, 0]


def test_an_account_id_is_shown_as_text_never_run(stack: Stack, browser: Any, console: dict[str, Any]) -> None:
    from urllib.parse import quote

    assert errors(load(browser, f"{console['base']}/console/account/{quote(HOSTILE, safe='')}")) == []
    assert text(browser, "account-id") == HOSTILE and text(browser, "acct-cash") == "5.000000"
    assert browser.execute_script("return [window.pwned, document.querySelectorAll('img').length]") == [None, 0]


def test_account_page_equals_the_cli(stack: Stack, browser: Any, console: dict[str, Any]) -> None:
    summaries = {a: json.loads(stack.cli("account", a, "--format", "json").stdout) for a in console["accounts"]}
    account = max(console["accounts"], key=lambda a: (len(summaries[a]["vouchers"]), a))
    summary = summaries[account]
    assert errors(load(browser, f"{console['base']}/console/account/{account}")) == []
    assert text(browser, "acct-status") == summary["status"]
    assert text(browser, "acct-cash") == summary["cash_balance"]
    assert text(browser, "acct-debt") == summary["debt"]
    assert int(text(browser, "acct-free")) == summary["free_tokens_left"]
    assert text(browser, "acct-settled") == (summary["last_settled_hour"] or "—")
    assert sorted(row[:3] for row in table_rows(browser, "vouchers")) == sorted(
        [v["voucher_id"], v["remaining"], v["expires_at"] or "never"] for v in summary["vouchers"]
    )
    assert {row[0]: row[1] for row in table_rows(browser, "keys")} == {
        k: ("revoked" if v["revoked_at"] else "active") for k, v in summary["keys"].items()
    }

    start, end = browser.execute_script("return [document.getElementById('from').value, document.getElementById('to').value]")
    bills = stack.bills("--account", account, "--from", start, "--to", end)
    assert bills
    total = sum(Decimal(b["amount"]) for b in bills)
    calls = sum(b["requests"] for b in bills if not b["item"].startswith("plugin:"))
    assert Decimal(text(browser, "range-amount")) == total and Decimal(text(browser, "bills-total")) == total
    assert int(text(browser, "range-calls")) == calls
    assert int(text(browser, "bills-count")) == len(bills)
    shown = table_rows(browser, "bills")
    assert [[r[0], r[1], r[2], r[-1]] for r in shown] == [[b["hour"], b["api_key_id"], b["item"], b["amount"]] for b in bills]
    for chart in ("chart-calls", "chart-tokens", "chart-amount"):
        series = chart_series(browser, chart)
        assert series, f"{chart} drew nothing"
        assert {s["name"] for s in series} == {b["item"] for b in bills if not b["item"].startswith("plugin:")}
    assert sum(sum(s["data"]) for s in chart_series(browser, "chart-calls")) == calls
    shoot(browser, "account")

    # by API key: the same calls, split by key
    browser.execute_script("const s = document.getElementById('by'); s.value = 'key'; s.dispatchEvent(new Event('change'));")
    deadline = time.monotonic() + 30
    while not (chart_series(browser, "chart-calls") or [{"name": ""}])[0]["name"].startswith("sk-"):
        assert time.monotonic() < deadline, "the charts did not switch to keys"
        time.sleep(0.1)
    by_key = chart_series(browser, "chart-calls")
    assert {s["name"] for s in by_key} == {b["api_key_id"] for b in bills if not b["item"].startswith("plugin:")}
    assert sum(sum(s["data"]) for s in by_key) == calls

    # settlements and rejections as the CLI lists them
    settled = stack.json_lines("settlements", "--account", account)
    in_range = [s for s in settled if start <= s["hour"] < end]
    assert [[r[0], r[1], r[2]] for r in table_rows(browser, "settlements")] == [[s["hour"], s["kind"], s["amount"]] for s in in_range]
    rejected = [r for r in stack.rejected("--account", account) if not r["timestamp"] or start <= r["timestamp"] < end]
    assert sorted(r[2] for r in table_rows(browser, "rejections")) == sorted(r["reason"] for r in rejected)


def test_monthly_statement_page_and_csv(stack: Stack, browser: Any, console: dict[str, Any]) -> None:
    account = console["accounts"][0]
    bills = stack.bills("--account", account)
    month = bills[-1]["hour"][:7]
    in_month = [b for b in bills if b["hour"].startswith(month)]
    total = sum(Decimal(b["amount"]) for b in in_month)
    assert errors(load(browser, f"{console['base']}/console/statement/{account}?month={month}")) == []
    assert text(browser, "st-account") == account and text(browser, "st-month") == month
    assert Decimal(text(browser, "st-total")) == total
    assert sum(int(r[2]) for r in table_rows(browser, "st-lines")) == sum(b["requests"] for b in in_month)
    href = browser.execute_script("return document.getElementById('st-csv').href")
    with urllib.request.urlopen(href, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(response.read().decode())))
    assert rows[0][:4] == ["account_id", account, "month", month]
    assert rows[-1][0] == "total" and Decimal(rows[-1][-1]) == total
    assert sum(Decimal(r[-1]) for r in rows[2:-1]) == total
