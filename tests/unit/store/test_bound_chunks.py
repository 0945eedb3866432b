"""What the worker's reads and its roll back send a ClickHouse server stays within the server's
limits whatever the account ids: a URL under http_max_uri_size over HTTP, a statement's text under
max_query_size on a cluster. The embedded engine is covered by tests/integration; the sizes here
are computed by clickhouse-connect's own binding code, as it would send them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from clickhouse_connect.driver.binding import bind_query, format_str

from pipeline.store import statestore
from pipeline.store.statestore import _sized_chunks, _text_bytes

HTTP_MAX_URI_SIZE = 1024 * 1024  # a ClickHouse server's default
MAX_QUERY_SIZE = 262_144  # ClickHouse's default


class HttpClientSpy:
    """A server client as far as statestore uses it: records the URL each call would be sent with
    (the bound values go in the URL; the statement itself in the body)."""

    uri = "http://clickhouse:8123"

    def __init__(self) -> None:
        self.urls: list[int] = []
        self.texts: list[int] = []

    def _record(self, sql: str, parameters: Any) -> None:
        text, bound = bind_query(sql, parameters)
        self.urls.append(len("http://clickhouse:8123/?" + urlencode(bound)))
        self.texts.append(len(text.encode()))

    def query(self, sql: str, parameters: Any = None) -> Any:
        self._record(sql, parameters)
        return type("Result", (), {"result_rows": []})()

    def command(self, sql: str, parameters: Any = None) -> None:
        self._record(sql, parameters)


# the longest account ids the records allow (128 characters), of a script that URL-encodes to 9
# bytes a character, and a quote to escape: what a hostile producer can send, one per record
HOSTILE = [f"{i:05d}'" + "\U0001f600" * 122 for i in range(6_000)]


def test_the_reads_of_hostile_account_ids_fit_a_servers_url() -> None:
    """Every read of the worker that binds account ids (or ids of the records' own making)."""
    seqs = {acc: 7 for acc in HOSTILE}
    reads = {
        "load_states": lambda spy: statestore.load_states(spy, HOSTILE),
        "roll_forward": lambda spy: statestore.roll_forward(spy, HOSTILE),
        "committed_seqs": lambda spy: statestore.committed_seqs(spy, HOSTILE),
        "load_lines": lambda spy: statestore.load_lines(spy, [(acc, 1_726_617_600) for acc in HOSTILE], seqs),
        "load_windows": lambda spy: statestore.load_windows(spy, [(acc, 1_726_617_600_000_000) for acc in HOSTILE], seqs),
        "committed_statuses": lambda spy: statestore.committed_statuses(spy, seqs),
        "committed_violations": lambda spy: statestore.committed_violations(spy, [(acc, acc) for acc in HOSTILE], seqs),
    }
    for name, read in reads.items():
        spy = HttpClientSpy()
        read(spy)
        assert len(spy.urls) > 2, name  # chunked by size, not only by count (5,000 values a query over HTTP)
        assert max(spy.urls) <= HTTP_MAX_URI_SIZE, name


def test_the_roll_back_of_hostile_account_ids_fits_a_servers_url_and_a_clusters_text() -> None:
    spy = HttpClientSpy()
    statestore.roll_back(spy, HOSTILE)
    assert spy.urls and max(spy.urls) <= HTTP_MAX_URI_SIZE
    assert max(spy.texts) < 1_000  # on one server the values are bound, not written into the statement
    cluster = HttpClientSpy()
    statestore.roll_back(cluster, HOSTILE, cluster=True)
    deletes = [size for size in cluster.texts if size > 1_000]
    assert len(deletes) > len(statestore.SEQ_COLUMNS) and max(deletes) <= MAX_QUERY_SIZE


def test_sized_chunks_keep_every_value_in_order_within_count_and_budget() -> None:
    values = [f"acct-{i}" + "'\\" * (i % 7) + "é" * (i % 3) for i in range(5_000)]
    chunks = list(_sized_chunks(values, 400, 20_000, _text_bytes))
    assert [v for chunk in chunks for v in chunk] == values
    assert all(len(chunk) <= 400 and sum(map(_text_bytes, chunk)) <= 20_000 for chunk in chunks)
    assert all(len(chunk) == 400 or sum(map(_text_bytes, chunk + nxt[:1])) > 20_000 for chunk, nxt in zip(chunks, chunks[1:]))


def test_a_value_costlier_than_the_budget_is_a_chunk_of_its_own() -> None:
    assert list(_sized_chunks(["a" * 100, "b", "c"], 10, 70, _text_bytes)) == [["a" * 100], ["b", "c"]]
    assert list(_sized_chunks([], 10, 70, _text_bytes)) == []


def test_text_bytes_is_what_the_driver_writes() -> None:
    for account in ("plain", "it's", "back\\slash", "\u00e9\U0001f600"):
        assert _text_bytes(account) == 2 * (len(format_str(account).encode()) + 2) + 22


def test_url_bytes_is_what_the_driver_sends_for_plain_and_other_ids() -> None:
    """The plain ids' shortcut counts what the driver and the URL encoding make of them, exactly."""
    from urllib.parse import quote

    from pipeline.store.statestore import _url_bytes

    for account in ("gw_100k-s1-0000042", "a.b~c-d_e", "", "x" * 128, "it's", "sp ace", "é", "\U0001f600", "a/b:c"):
        assert _url_bytes(account) == len(quote(format_str(account), safe="")) + 3, account
    assert _url_bytes(("acct", 7)) == _url_bytes("acct") + _url_bytes(7) + 9
