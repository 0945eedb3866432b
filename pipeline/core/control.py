"""Control records: what the pipeline writes to its own input log (clock ticks, rebill revisions,
barriers), and how a worker tells them from a forgery (CONTRACT: control records).

A control record carries `signature`: HMAC-SHA256, under a key only operators and workers hold,
of the record's canonical JSON without that field. A signature, not a topic ACL, because these
records must travel in the account's own partition of the input topic (a tick or a rebill is
ordered among the account's records), which every producer of usage can write to; a signature
holds the same on the embedded broker, on Apache Kafka and on a mirror of the topic. A copy of a
signed record sent again is the same record: its identity makes it a duplicate delivery.

Pure: no I/O. Where the key comes from is the edges' business (runtime.control_key).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

SIGNATURE = "signature"
BARRIER = "billing.barrier"
CONTROL_KINDS = ("clock.tick", "rebill.lines", BARRIER)


def _mac(body: dict[str, Any], key: bytes) -> str:
    unsigned = {k: v for k, v in body.items() if k != SIGNATURE}
    return hmac.new(key, orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()


def sign(body: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The record with its signature (any earlier one replaced)."""
    return {**body, SIGNATURE: _mac(body, key)}


def signed_bytes(body: dict[str, Any], key: bytes) -> bytes:
    return orjson.dumps(sign(body, key))


def verify(body: dict[str, Any], key: bytes | None) -> bool:
    """True only for a record signed with `key` (none without a key: nothing is trusted then)."""
    given = body.get(SIGNATURE)
    if key is None or not isinstance(given, str):
        return False
    return hmac.compare_digest(given, _mac(body, key))


def sign_line(line: bytes, key: bytes) -> bytes:
    """A JSON line with its control record signed (an operator's own file of ticks); any other
    line unchanged."""
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if isinstance(body, dict) and body.get("type") in CONTROL_KINDS:
        return signed_bytes(body, key)
    return line
