"""Reads what the fold needs from ClickHouse: account snapshots and the working sets; and the two
repairs of a unit's write that stopped halfway: roll_back and roll_forward.

Rows newer than an account's snapshot (revision above its seq) come from a batch whose snapshot
never landed (a crash mid-write); they are ignored here and rewritten when that batch is
processed again, so a restart resumes from one consistent point. The aggregates (lines, hour
totals, windows) are written after the snapshot (store/sink.py encode), so a snapshot can land
without them: its redo writes them again (roll_forward, roll_forward_partitions).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import quote

from clickhouse_connect.driver.binding import format_str
from clickhouse_connect.driver.client import Client

from pipeline.core.facts import StatusChange, Violation
from pipeline.core.state import LINE_COUNTS, AccountState, Line, LineKey, Window
from pipeline.core.timestamps import US_PER_MINUTE, US_PER_SECOND
from pipeline.core.windows import LIMIT_ORDER, WindowKey
from pipeline.store import sink

# Values bound into one query, all its arrays together. The engine takes about 1,000 times longer
# past some size (measured with chdb 4.4: one array of 125,000 hashes 0.2 s, of 140,000 119 s; two
# arrays of 50,000 values each, load_seen's, 495 s against 0.36 s for two of 25,000), and a batch
# of 1,000 messages can hold 200,000 records: big batches query in chunks.
MAX_BOUND_VALUES = 50_000
# Over HTTP the bound values travel in the URL, which a ClickHouse server refuses past 1 MiB by
# default (http_max_uri_size): 50,000 seen-id hashes are about 1.1 MB. 5,000 are about 110 KB.
MAX_BOUND_VALUES_HTTP = 5_000
# And at most this many per query whatever the engine, for an IN set on a key column (load_seen binds hashes only): on gateway traffic over 300,000 accounts
# (more than the LRU keeps, so nearly every account of a unit of 50,000 single-record messages is
# cold) one load_states query of about 48,000 account ids kept two engine threads busy for
# minutes, although the same query alone took 0.39 s; in chunks of 10,000 that run went through
# (`python -m bench.gateway_processor --accounts 300000 --records 400000 --bound-values 10000`).
# Not isolated; suspected: the IN set's index analysis per part, with the merges behind.
MAX_BOUND_PER_QUERY = 10_000
# Over HTTP the bound values travel in the URL, which a server refuses past http_max_uri_size
# (1 MiB by default): at most this many bytes of them, URL-encoded, per query. A count alone was not
# enough: an account id may be 128 characters of any script, up to 1.5 KB URL-encoded, and 5,000
# such ids (a hostile producer's, in one batch) made a 7.7 MB URL, refused for every retry of the
# batch: billing stopped for everyone.
MAX_BOUND_URL_BYTES = 512 * 1024
# A statement's text on a cluster, at most: under ClickHouse's max_query_size (262,144 bytes by
# default, which counts the values written into the text) and Keeper's limit on a distributed DDL
# entry (1 MB).
ON_CLUSTER_QUERY_BYTES = 240_000
T = TypeVar("T")


def _embedded(client: Client) -> bool:
    return str(getattr(client, "uri", "")).startswith("chdb:")


def _bound_limit(client: Client) -> int:
    return MAX_BOUND_VALUES if _embedded(client) else min(MAX_BOUND_VALUES, MAX_BOUND_VALUES_HTTP)


def _chunk_size(client: Client, width: int = 1) -> int:
    """Items per query when each binds `width` values (2 for pairs)."""
    return max(1, min(_bound_limit(client), MAX_BOUND_PER_QUERY) // width)


def _chunks(values: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _sized_chunks(values: list[T], max_count: int, budget: int, cost: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive chunks of at most `max_count` values whose costs add up to at most `budget` (a
    value that alone costs more is a chunk of its own)."""
    chunk: list[T] = []
    size = 0
    for value in values:
        value_cost = cost(value)
        if chunk and (len(chunk) >= max_count or size + value_cost > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(value)
        size += value_cost
    if chunk:
        yield chunk


# Characters that neither the driver escapes nor a URL encodes: an id of only these takes its own
# length plus its quotes and separator (9 bytes, encoded). Checked in C, where writing and encoding
# each id took 5.3 us: 130 ms of Python's lock per 25,000 ids bound, on every read of a unit.
_URL_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")


def _url_bytes(value: Any) -> int:
    """A bound value's bytes in a URL: as the driver writes it (quoted, escaped), URL-encoded,
    with its separator; a tuple, its values'."""
    if isinstance(value, tuple):
        return sum(_url_bytes(item) for item in value) + 9
    if isinstance(value, str):
        if _URL_PLAIN.fullmatch(value):
            return len(value) + 9
        return len(quote(format_str(value), safe="")) + 3
    return len(str(value)) + 3


def _bound_chunks(client: Client, values: list[T], width: int = 1, extra: int = 0) -> Iterator[list[T]]:
    """`values` in chunks to bind, one query each: under the engine's bound limit (`width` values
    bound per item), and over HTTP under MAX_BOUND_URL_BYTES (`extra`: the bytes bound beside each
    value, such as a number that goes with it). The embedded engine takes no URL: no cost to count."""
    if _embedded(client):
        return _chunks(values, _chunk_size(client, width))
    return _sized_chunks(values, _chunk_size(client, width), MAX_BOUND_URL_BYTES, lambda value: _url_bytes(value) + extra)


def _query_chunked(
    client: Client,
    sql: str,
    name: str,
    values: list[Any],
    params: dict[str, Any] | None = None,
    render: Callable[[list[Any]], Any] | None = None,
    width: int = 1,
) -> list[Any]:
    """Rows of `sql` for every chunk of `values`, bound as parameter `name` (rendered by `render`);
    `width`: values bound per item (2 for pairs), so that a chunk stays under the bound limit."""
    rows: list[Any] = []
    for chunk in _bound_chunks(client, values, width):
        rows += client.query(sql, parameters={**(params or {}), name: render(chunk) if render else chunk}).result_rows
    return rows


def load_states(client: Client, accounts: Iterable[str]) -> dict[str, AccountState]:
    wanted = sorted(set(accounts))
    rows = _query_chunked(
        client,
        "SELECT account_id, argMax(state, seq) FROM account_state WHERE account_id IN {a:Array(String)} GROUP BY account_id",
        "a",
        wanted,
        render=str_array,
    )
    return {acc: AccountState.from_json(text) for acc, text in rows}


RECENT_ROWS_PER_ACCOUNT = 4  # snapshot rows looked at per account wanted: busy accounts write one per unit


def load_recent_states(client: Client, limit: int) -> dict[str, AccountState]:
    """The committed snapshots of at most `limit` accounts among those written most recently: the
    ones a restarted worker meets first. One query; the engine picks the accounts (no list bound
    from Python) from the newest `limit` * RECENT_ROWS_PER_ACCOUNT snapshot rows: a top-k sort,
    whose memory is bounded by that, where grouping the whole table by account would hold every
    account ever written. GLOBAL: on a cluster the subquery over the Distributed table runs once,
    not on every shard (which ClickHouse refuses by default); on one node it is a plain IN."""
    rows = client.query(
        "SELECT account_id, argMax(state, seq) FROM account_state WHERE account_id GLOBAL IN "
        "(SELECT DISTINCT account_id FROM (SELECT account_id FROM account_state ORDER BY updated_at DESC LIMIT {rows:UInt64}) "
        "LIMIT {n:UInt64}) GROUP BY account_id",
        parameters={"n": limit, "rows": limit * RECENT_ROWS_PER_ACCOUNT},
    ).result_rows
    return {acc: AccountState.from_json(text) for acc, text in rows}


def processed_offsets(client: Client, epoch: str, partitions: list[int]) -> dict[int, int]:
    """The highest input offset processed and written, per partition of a log epoch."""
    result = client.query(
        "SELECT partition, max(offset) FROM partition_progress WHERE epoch = {e:String} AND partition IN {p:Array(UInt32)} "
        "GROUP BY partition",
        parameters={"e": epoch, "p": partitions},
    )
    return {int(p): int(o) for p, o in result.result_rows}


class IntArrayParam:
    """An Array(UInt64) query parameter, rendered by str.join in C. clickhouse-connect renders a
    bound list value by value in Python, about 3 us a value: more than half the time of looking
    up a unit's seen ids. It passes any type it does not know through str()."""

    def __init__(self, values: Iterable[int]) -> None:
        self.text = "[" + ",".join(map(str, values)) + "]"

    def __str__(self) -> str:
        return self.text


# Characters clickhouse-connect escapes in a bound string; text without any of them renders as is.
_NEEDS_ESCAPE = re.compile(r"[\\'\x00-\x1f\x7f]")


class StrArrayParam:
    """An Array(String) query parameter rendered by str.join in C, as IntArrayParam renders integers;
    a value that needs escaping falls back to clickhouse-connect's own rendering of the whole list.
    A unit of single-record messages binds one account id per record (load_states, load_seen)."""

    def __init__(self, values: list[str]) -> None:
        self.fallback = values if _NEEDS_ESCAPE.search("".join(values)) else None
        self.text = "['" + "','".join(values) + "']" if values else "[]"

    def __str__(self) -> str:
        return self.text


def str_array(values: list[str]) -> Any:
    param = StrArrayParam(values)
    return param.fallback if param.fallback is not None else param


class KeyedIntArrayParam:
    """An Array(Tuple(String, Int64)) parameter, (account, integer) pairs, rendered in one pass:
    clickhouse-connect renders a tuple value by value in Python (about 5 us a pair), which was a
    sixth of a unit's reads with 40,000 accounts in it."""

    def __init__(self, pairs: list[tuple[str, int]]) -> None:
        self.text = "[" + ",".join([f"('{acc}',{value})" for acc, value in pairs]) + "]"

    def __str__(self) -> str:
        return self.text


def keyed_ints(pairs: list[tuple[str, int]]) -> Any:
    if _NEEDS_ESCAPE.search("".join([acc for acc, _ in pairs])):
        return pairs
    return KeyedIntArrayParam(pairs)


def load_seen(client: Client, wanted: dict[tuple[str, str], int]) -> dict[tuple[str, str], tuple[str, int]]:
    """(account, record_id) -> (digest, seq) of identities already claimed. `wanted` maps each
    (account, record_id) to its record_hash (the caller has it: it writes the same hash)."""
    found: dict[tuple[str, str], tuple[str, int]] = {}
    # By hash alone, read first (PREWHERE), and matched to its account here: one scan of the 8-byte
    # hash column per query, where `account_id IN` (the key's first column) read nearly every
    # account's granules once per chunk of pairs. One array bound, so up to the engine's whole
    # limit per query, not MAX_BOUND_PER_QUERY (that one is for key-column IN sets). Figures:
    # docs/performance-log.md, session 12 (about 35 ms per million stored ids per unit).
    for chunk in _chunks(list(set(wanted.values())), _bound_limit(client)):
        result = client.query(
            "SELECT account_id, record_id, digest, seq FROM seen_records PREWHERE rid_hash IN {h:Array(UInt64)}",
            parameters={"h": IntArrayParam(chunk)},
        )
        for acc, rid, digest, seq in result.result_rows:
            key = (acc, rid)
            if key in wanted and (key not in found or seq < found[key][1]):
                found[key] = (digest, seq)
    return found


# A bill line as the worker and a rebill read it: its key, then `line_of`'s values.
LINE_SELECT = f"SELECT account_id, toUnixTimestamp(hour), api_key_id, item, {', '.join(LINE_COUNTS)}, amount, revision FROM bill_lines"


def line_of(values: Sequence[Any]) -> Line:
    """A Line from the values of LINE_SELECT after the key (counters, amount, revision)."""
    *counts, amount, revision = values
    line = Line(amount=Decimal(amount).quantize(Decimal("0.000001")), revision=revision)
    for name, count in zip(LINE_COUNTS, counts, strict=True):
        setattr(line, name, count)
    return line


def load_lines(client: Client, account_hours: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[LineKey, Line]]:
    """Current lines of the given account-hours as of each account's snapshot seq."""
    rows = _query_chunked(
        client,
        LINE_SELECT + " WHERE (account_id, toUnixTimestamp(hour)) IN {p:Array(Tuple(String, Int64))}",
        "p",
        [(acc, hour // US_PER_SECOND) for acc, hour in account_hours],
        render=keyed_ints,
        width=2,
    )
    lines: dict[str, dict[LineKey, Line]] = {}
    for acc, hour_s, key, item, *values in rows:
        line = line_of(values)
        if line.revision > max_seq.get(acc, 0):
            continue
        line_key = (hour_s * US_PER_SECOND, key, item)
        known = lines.setdefault(acc, {})
        if line_key not in known or known[line_key].revision < line.revision:
            known[line_key] = line
    return lines


def load_windows(client: Client, account_minutes: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[WindowKey, Window]]:
    """Second and minute windows inside the given account-minutes, as of each snapshot."""
    rows = _query_chunked(
        client,
        "SELECT account_id, kind, toUnixTimestamp64Micro(window_start) AS start, requests, tokens, revision FROM rate_windows "
        "WHERE (account_id, intDiv(toUnixTimestamp64Micro(window_start), {m:Int64})) IN {p:Array(Tuple(String, Int64))}",
        "p",
        [(acc, minute // US_PER_MINUTE) for acc, minute in account_minutes],
        {"m": US_PER_MINUTE},
        render=keyed_ints,
        width=2,
    )
    windows: dict[str, dict[WindowKey, Window]] = {}
    for acc, kind, start, requests, tokens, revision in rows:
        if revision > max_seq.get(acc, 0):
            continue
        known = windows.setdefault(acc, {})
        key = (kind, start)
        if key not in known or known[key].revision < revision:
            known[key] = Window(requests, tokens, revision)
    return windows


def committed_statuses(client: Client, max_seq: dict[str, int]) -> list[StatusChange]:
    """Each account's latest status change as of its snapshot: what the status topic must hold."""
    rows = _query_chunked(
        client,
        "SELECT account_id, status, debt, cash_balance, toUnixTimestamp64Micro(clock), seq FROM account_status FINAL "
        "WHERE account_id IN {a:Array(String)} ORDER BY account_id, seq",
        "a",
        sorted(max_seq),
        render=str_array,
    )
    latest: dict[str, StatusChange] = {}
    for acc, status, debt, cash, clock_us, seq in rows:
        if seq <= max_seq[acc]:
            latest[acc] = StatusChange(acc, status, Decimal(debt), Decimal(cash), clock_us, seq)
    return [latest[acc] for acc in sorted(latest)]


def committed_violations(client: Client, events: list[tuple[str, str]], max_seq: dict[str, int]) -> list[Violation]:
    """The rate-limit violations these (account, event_id) calls produced when they were applied."""
    rows = _query_chunked(
        client,
        "SELECT account_id, event_id, toUnixTimestamp64Micro(ts), limit_name, toUnixTimestamp64Micro(window_start), observed, "
        "allowed, seq FROM rate_violations FINAL WHERE (account_id, event_id) IN {p:Array(Tuple(String, String))}",
        "p",
        events,
        width=2,
    )
    violations = [Violation(*row) for row in rows if row[7] <= max_seq.get(row[0], 0)]
    return sorted(violations, key=lambda v: (v.account_id, v.seq, LIMIT_ORDER.get(v.limit, len(LIMIT_ORDER))))


# Every table whose rows carry the account seq that wrote them, and that column's name.
SEQ_COLUMNS = {
    "seen_records": "seq",
    "bill_lines": "revision",
    "priced_usage": "seq",
    "rejections": "seq",
    "rate_windows": "revision",
    "rate_violations": "seq",
    "settlements": "seq",
    "account_status": "seq",
    "bill_hour_totals": "revision",  # totals of an account-hour, at its highest line revision
}


def committed_seqs(client: Client, accounts: list[str]) -> dict[str, int]:
    """The seq of each account's snapshot in ClickHouse: its commit point."""
    rows = _query_chunked(
        client,
        "SELECT account_id, max(seq) FROM account_state WHERE account_id IN {accs:Array(String)} GROUP BY account_id",
        "accs",
        accounts,
    )
    return {acc: int(seq) for acc, seq in rows}


def roll_back(client: Client, accounts: Iterable[str], cluster: bool = False) -> None:
    """Delete what a failed batch wrote past the accounts' commit points. Its retry may write other
    rows at the same seqs (a record it rejects now, say), and a row left behind at a higher
    revision would otherwise win over the right one, or show in a query, for ever.

    The accounts and their commit points are bound values (not written into the statement: with
    them in its text, a unit of more than about 5,000 accounts passed max_query_size and its roll
    back failed, which gateway traffic does with every unit). On a cluster
    (BILLING_CLICKHOUSE_CLUSTER=1) ClickHouse refuses a DELETE on a Distributed table ("DELETE
    query is not supported"): the delete goes to the shards' `_local` tables, ON CLUSTER (a
    replicated table's delete runs on one replica of each shard and is replicated from there),
    with the values written into its text (a distributed DDL carries no bound values), in chunks
    that keep the text under ON_CLUSTER_QUERY_BYTES."""
    accs = sorted(set(accounts))
    if cluster:
        chunks = _sized_chunks(accs, MAX_BOUND_PER_QUERY, ON_CLUSTER_QUERY_BYTES, _text_bytes)
        on, accs_at, seqs_at = "_local ON CLUSTER '{cluster}'", "%(accs)s", "%(seqs)s"  # written into the text
    else:
        chunks = _bound_chunks(client, accs, width=2, extra=_url_bytes(2**64 - 1))  # each account's seq beside it
        on, accs_at, seqs_at = "", "{accs:Array(String)}", "{seqs:Array(UInt64)}"  # bound
    for chunk in chunks:
        seqs = committed_seqs(client, chunk)
        params = {"accs": chunk, "seqs": [seqs.get(acc, 0) for acc in chunk]}
        for table, column in SEQ_COLUMNS.items():
            client.command(
                f"DELETE FROM {table}{on} WHERE account_id IN {accs_at} "
                f"AND {column} > transform(account_id, {accs_at}, {seqs_at}, toUInt64(0))",
                parameters=params,
            )


def _text_bytes(account: str) -> int:
    """An account's bytes in a roll back's text: its id twice (the IN list and the transform's), as
    the driver writes it (quoted, escaped, with a separator), and its seq (20 digits at most)."""
    return 2 * (len(format_str(account).encode()) + 2) + 22


def roll_forward(client: Client, accounts: Iterable[str]) -> int:
    """Write again the aggregate rows of each account's committed snapshot (its redo): after a
    failed unit, whose snapshot may have landed without its lines, hour totals and windows. Same
    keys, revisions and values as the unit wrote, so rows already in change nothing. Returns the
    snapshots rolled forward. Not through `sink.send`: that is one unit's write (and what tests
    wrap to fail a unit's write)."""
    rows = _query_chunked(
        client,
        "SELECT account_id, argMax(redo, seq) FROM account_state WHERE account_id IN {a:Array(String)} GROUP BY account_id",
        "a",
        sorted(set(accounts)),
        render=str_array,
    )
    sink.insert_all(client, sink.redo_inserts([redo for _, redo in rows]))
    return len(rows)


def _progress_params(client: Client, partitions: list[int]) -> dict[str, Any]:
    """The processed offset of every (epoch, partition) of these partitions, as the keys and values
    of `PAST_PROGRESS`'s transform() (an account_state row written past its partition's progress row)."""
    done = client.query(
        "SELECT epoch, partition, max(offset) FROM partition_progress WHERE partition IN {p:Array(UInt32)} GROUP BY epoch, partition",
        parameters={"p": partitions},
    ).result_rows
    return {"k": [f"{epoch}/{partition}" for epoch, partition, _ in done], "o": [int(o) for _, _, o in done]}


# (client-side parameters: the offsets' array is typed from its values)
PAST_PROGRESS = "log_epoch != '' AND log_offset > transform(concat(log_epoch, '/', toString(log_partition)), %(k)s, %(o)s, toInt64(-1))"


def roll_forward_partitions(client: Client, partitions: list[int]) -> int:
    """Write again the aggregates of every snapshot of these partitions that is in doubt: written
    past its partition's progress row (of its own log epoch), by a unit whose progress row, written
    after the unit's aggregates, never landed (a crash, or a worker that lost the partition after a
    failed write). Run when a worker first takes a partition, before it loads any state of it;
    one scan of account_state's position columns. Returns the snapshots rolled forward."""
    rows = client.query(
        "SELECT account_id, argMax(redo, seq) FROM account_state WHERE log_partition IN %(p)s AND "
        + PAST_PROGRESS
        + " GROUP BY account_id",
        parameters={"p": partitions, **_progress_params(client, partitions)},
    ).result_rows
    sink.insert_all(client, sink.redo_inserts([redo for _, redo in rows]))
    return len(rows)
