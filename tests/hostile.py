"""Hostile input records: what a broken producer, a fuzzer or an attacker could put on the topic.

    hostile_corpus(n=10000, seed=7) -> list[bytes]   # deterministic: same arguments, same bytes

The corpus holds every named case below (`MUST_BE_INVALID`, `MUST_PARSE`), then random records of
these families, mixed with a share of valid records from `pipeline.demo.workload.generate` kept in
their publish order (so keys are created before they are used and some records are billed):

- random bytes (sometimes over the 64 KiB record limit), invalid UTF-8, a BOM, truncated JSON;
- numbers: 1e308, 1e400, 10**30, -0, -0.0, NaN/Infinity (bare and quoted), 2.5, 1e2, hex, ...;
- nesting up to depth 10,000 (orjson stops at 1024; a depth just under it must not crash either);
- very long strings, unicode (emoji, RTL override, NUL, zero-width, escaped lone surrogates),
  SQL-looking strings;
- missing, extra and mistyped fields (booleans where integers belong: JSON Schema's "integer"
  must not take `true`), wrong record types, empty objects, arrays, null, scalars;
- timestamps out of range or impossible (year 0001, 9999, 1969, second 60, offset +25:00, +08:60,
  non-ASCII digits), duplicated keys in the JSON text;
- valid-looking records with one field mutated (unknown model or plugin, over the limits, another
  key, a re-used event_id with other tokens, ...): some of these are billed, most are rejected.

Module level only builds bytes: it imports nothing from the pipeline but the workload generator.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable

from pipeline.demo.workload import generate

MAX_RECORD_BYTES = 64 * 1024
VALID_SHARE = 0.3  # of n: records straight from the workload generator

ACCOUNT = "hostile-acct"
TS = "2024-09-18T10:00:00+08:00"  # every model and plugin has a price in force

SQL = (
    "'; DROP TABLE bill_lines; --",
    '" OR 1=1 --',
    "1; DELETE FROM rejections WHERE 1=1",
    "acct' UNION SELECT * FROM account_state --",
    "Robert'); DROP TABLE students;--",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "../../../../etc/passwd",
    "%s%s%s%n",
    "<script>alert(1)</script>",
)
UNICODE = (
    "😀👩‍👩‍👧‍👦🏳️‍🌈",  # emoji, ZWJ sequences
    "\u202eevil\u202c",  # RTL override
    "مرحبا بالعالم",  # RTL script
    "a\u0000b",  # NUL
    "\u200b\u200c\u200d\ufeff",  # zero-width, BOM inside a string
    "e\u0301\u0301\u0301",  # combining marks
    "星辰",
    "\U0010ffff",
    "\t\r\n\x7f",
    " ",
)
# escapes that orjson must refuse (lone surrogates) or take (a proper pair)
ESCAPES = ("\\ud800", "\\udfff", "a\\ud800b", "\\ud800\\ud800", "\\udc00\\ud800", "\\ud83d\\ude00")
NUMBERS = (
    "1e308",
    "-1e308",
    "1E400",
    "-1e400",
    "1e-400",
    "10" + "0" * 29,
    "-" + "1" * 30,
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "-0",
    "-0.0",
    "0.0",
    "2.5",
    "0.000001",
    "1e2",
    "1E+2",
    "2.0000000000000001",
    "999999999.9999999",
    "1000000000",
    "1000000001",
    "1000000000.0",
    "4294967296",
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "0x10",
    "1_000",
    "01",
    "+1",
    ".5",
    "5.",
    "1e",
    "--1",
    '"NaN"',
    '"1e308"',
    '"12"',
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[1]",
    '{"n":1}',
    '""',
)
TIMESTAMPS = (
    "0001-01-01T00:00:00+08:00",
    "0001-01-01T00:00:00-23:59",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59+08:00",
    "9999-12-31T23:59:59-23:59",
    "1969-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999999Z",
    "2100-01-01T00:00:00Z",
    # second 60 is a leap second only at the end of a UTC day (23:59:60Z however the offset spells
    # it); 23:59:60+08:00 is 15:59:60Z, and a minute before midnight UTC is no leap second either
    "2024-09-18T23:59:60+08:00",
    "2016-12-31T23:58:60Z",
    "2016-12-31T22:59:60Z",
    "2016-12-31T23:59:60-01:00",
    "2016-12-31T23:59:61Z",
    "2099-12-31T23:59:60Z\n",
    "2024-09-18T10:00:00+25:00",
    "2024-09-18T10:00:00-24:00",
    "2024-09-18T10:00:00+08:60",
    "2024-09-18T10:00:00+00:99",
    "2024-09-18T24:00:00+08:00",
    "2024-09-18T10:60:00+08:00",
    "2024-02-30T10:00:00+08:00",
    "2023-02-29T10:00:00Z",
    "2024-13-01T10:00:00Z",
    "2024-00-10T10:00:00Z",
    "2024-09-18T10:00:00",
    "2024-09-18",
    "10:00:00+08:00",
    "2024-09-18T10:00:00.1234567890+08:00",
    "2024-09-18T10:00:00.+08:00",
    "2024-09-18T10:00:00,5+08:00",
    "2024-09-18T10:00:00+0800",
    "2024-09-18T10:00:00+08",
    "2024-09-18T10:00:00 +08:00",
    " 2024-09-18T10:00:00Z",
    "2024-09-18T10:00:00Z\n",
    "2024-09-18T10:00:00UTC",
    "２０２４-09-18T10:00:00+08:00",
    "٢٠٢٤-٠٩-١٨T10:00:00+08:00",
    "2024-09-18T10:00:00+08:00'; DROP TABLE bill_lines; --",
    "",
    "1726624800",
    "2024-W38-3T10:00:00Z",
    "+2024-09-18T10:00:00Z",
)
# edge timestamps that are well-formed and in range
GOOD_TIMESTAMPS = (
    "2024-09-18T10:00:00+08:00",
    "2024-09-18t10:00:00z",
    "2024-09-18 10:00:00Z",
    "2024-09-18T02:00:00-00:00",
    "2024-09-18T10:00:00.123456789+08:00",
    "2024-09-17T22:30:00-03:30",
    "2024-09-18T10:59:59.9999999+08:00",
    "2000-01-01T00:00:00Z",
    "2099-12-31T23:59:59.999999Z",
    # RFC 3339 leap seconds: the last microsecond of their UTC day (23:59:59.999999Z)
    "2016-12-31T23:59:60Z",
    "2017-01-01T07:59:60+08:00",
    "2016-12-31T18:29:60.5-05:30",
    "2015-06-30T23:59:60.999999999z",
)
JUNK_VALUES: tuple[Any, ...] = (
    True,
    False,
    None,
    [],
    {},
    "",
    "0",
    "12",
    12.5,
    -1,
    -0.5,
    [1, 2],
    {"a": 1},
    10**18,
    -(10**18),
    "x" * 200,
)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _usage(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "account_id": ACCOUNT,
        "timestamp": TS,
        "event_id": "hostile-ev",
        "api_key_id": "hostile-key",
        "model": "xingchen-lite",
        "input_tokens": 10,
        "output_tokens": 5,
    }
    body.update(over)
    return body


def _with_literal(body: dict[str, Any], path: tuple[str, ...], literal: str) -> bytes:
    """`body` as JSON with the value at `path` replaced by raw JSON text (which may be invalid JSON)."""
    marker = "\u2603MARK\u2603"
    target = body
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = marker
    return _dumps(body).replace(json.dumps(marker, ensure_ascii=False).encode("utf-8"), literal.encode("utf-8"))


def _nested(depth: int, kind: str = "array") -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# Named cases: each must come out of parse_record as Invalid (and so be rejected `invalid_schema`).
MUST_BE_INVALID: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("whitespace", b" \n\t "),
    ("null", b"null"),
    ("true", b"true"),
    ("number", b"42"),
    ("string", b'"usage"'),
    ("empty-array", b"[]"),
    ("array-of-record", b"[" + _dumps(_usage()) + b"]"),
    ("empty-object", b"{}"),
    ("two-documents", _dumps(_usage()) + b" " + _dumps(_usage())),
    ("trailing-comma", _dumps(_usage())[:-1] + b",}"),
    ("bom", b"\xef\xbb\xbf" + _dumps(_usage())),
    ("invalid-utf8", _dumps(_usage()).replace(b"hostile-ev", b"hostile-\xff\xfe")),
    ("overlong-utf8", _dumps(_usage()).replace(b"hostile-ev", b"\xc0\xaf")),
    ("utf8-encoded-surrogate", _dumps(_usage()).replace(b"hostile-ev", b"\xed\xa0\x80")),
    ("truncated-utf8", _dumps(_usage()).replace(b"hostile-ev", b"\xe6\x98")),
    ("lone-surrogate-escape", _with_literal(_usage(), ("event_id",), '"\\ud800"')),
    ("lone-low-surrogate-escape", _with_literal(_usage(), ("model",), '"x\\udfffy"')),
    ("nan", _with_literal(_usage(), ("input_tokens",), "NaN")),
    ("infinity", _with_literal(_usage(), ("output_tokens",), "Infinity")),
    ("quoted-nan", _with_literal(_usage(), ("input_tokens",), '"NaN"')),
    ("1e308", _with_literal(_usage(), ("input_tokens",), "1e308")),
    ("1e400", _with_literal(_usage(), ("input_tokens",), "1e400")),
    ("10**30", _with_literal(_usage(), ("output_tokens",), "1" + "0" * 30)),
    ("2**64", _with_literal(_usage(), ("output_tokens",), "18446744073709551616")),
    ("fraction", _with_literal(_usage(), ("input_tokens",), "2.5")),
    ("tiny-fraction", _with_literal(_usage(), ("input_tokens",), "0.000001")),
    ("negative", _with_literal(_usage(), ("input_tokens",), "-1")),
    ("over-maximum", _with_literal(_usage(), ("output_tokens",), "1000000001")),
    ("bool-input-tokens", _dumps(_usage(input_tokens=True))),
    ("bool-output-tokens", _dumps(_usage(output_tokens=False))),
    ("bool-plugin-count", _dumps(_usage(plugins={"text_to_image": True}))),
    ("bool-breakdown", _dumps(_usage(input_breakdown={"history": True}))),
    ("bool-limit", _dumps({"type": "limits.set", "account_id": ACCOUNT, "timestamp": TS, "qps": True})),
    ("string-tokens", _dumps(_usage(input_tokens="10"))),
    ("null-tokens", _dumps(_usage(input_tokens=None))),
    ("array-tokens", _dumps(_usage(input_tokens=[10]))),
    ("hex-tokens", _with_literal(_usage(), ("input_tokens",), "0x10")),
    ("leading-zero", _with_literal(_usage(), ("input_tokens",), "010")),
    ("deep-array-10000", _nested(10_000).encode()),
    ("deep-object-10000", _nested(10_000, "object").encode()),
    ("deep-array-1025", _nested(1025).encode()),
    ("deep-in-type-1000", _with_literal(_usage(), ("type",), _nested(1000))),
    ("deep-in-type-1020", _with_literal(_usage(), ("type",), _nested(1020, "object"))),
    ("deep-in-account-1020", _with_literal(_usage(), ("account_id",), _nested(1020))),
    ("deep-in-event-id-1020", _with_literal(_usage(), ("event_id",), _nested(1020))),
    ("deep-in-plugins-1020", _with_literal(_usage(), ("plugins", "text_to_image"), _nested(1018))),
    ("deep-in-tokens-10000", _with_literal(_usage(), ("input_tokens",), _nested(10_000))),
    ("over-64k", _dumps(_usage(event_id="e" * MAX_RECORD_BYTES))),
    ("long-event-id", _dumps(_usage(event_id="e" * 129))),
    ("long-account-id", _dumps(_usage(account_id="a" * 60_000))),
    ("long-plugin-name", _dumps(_usage(plugins={"p" * 65: 1}))),
    ("too-many-plugins", _dumps(_usage(plugins={f"p{i}": 1 for i in range(33)}))),
    ("empty-plugin-name", _dumps(_usage(plugins={"": 1}))),
    ("plugins-array", _dumps(_usage(plugins=["text_to_image"]))),
    ("empty-event-id", _dumps(_usage(event_id=""))),
    ("missing-event-id", _dumps({k: v for k, v in _usage().items() if k != "event_id"})),
    ("missing-account", _dumps({k: v for k, v in _usage().items() if k != "account_id"})),
    ("missing-timestamp", _dumps({k: v for k, v in _usage().items() if k != "timestamp"})),
    ("extra-field", _dumps(_usage(cost="0.01"))),
    ("sql-field-name", _dumps(_usage(**{"'; DROP TABLE bill_lines; --": 1}))),
    ("unknown-type", _dumps(_usage(type="usage.v2"))),
    ("sql-type", _dumps(_usage(type="'; DROP TABLE bill_lines; --"))),
    ("null-type", _dumps(_usage(type=None))),
    ("int-type", _dumps(_usage(type=1))),
    ("uppercase-channel", _dumps(_usage(channel="API"))),
    ("null-channel", _dumps(_usage(channel=None))),
    ("usage-fields-as-key-record", _dumps(_usage(type="api_key.created"))),
    ("key-record-missing-key", _dumps({"type": "api_key.created", "account_id": ACCOUNT, "timestamp": TS})),
    ("recharge-float-amount", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": 1.5})),
    ("recharge-negative", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "-5"})),
    ("recharge-nan", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "NaN"})),
    ("recharge-1e308", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "1e308"})),
    ("recharge-7-places", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "1.0000001"})),
    ("recharge-arabic-digits", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "١٠٠"})),
    ("recharge-fullwidth-digits", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "１００"})),
    ("recharge-trailing-newline", _dumps({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": TS, "amount": "100\n"})),
    (
        "voucher-bad-expiry",
        _dumps(
            {
                "type": "credit.voucher",
                "account_id": ACCOUNT,
                "timestamp": TS,
                "voucher_id": "v",
                "amount": "1",
                "expires_at": "9999-12-31T23:59:59Z",
            }
        ),
    ),
    # duplicated keys: orjson keeps the last one, which is what must be judged
    ("duplicate-key-last-bool", _dumps(_usage())[:-1] + b',"input_tokens":true}'),
    ("duplicate-key-last-negative", _dumps(_usage())[:-1] + b',"output_tokens":-5}'),
    ("duplicate-key-last-type", _dumps(_usage())[:-1] + b',"type":"invoice"}'),
    # control records from outside the pipeline's tools: unsigned, or signed with another key (unauthorized)
    ("forged-tick", _dumps({"type": "clock.tick", "account_id": ACCOUNT, "timestamp": "2099-01-01T00:00:00+08:00"})),
    ("forged-tick-bad-signature", _dumps({"type": "clock.tick", "account_id": ACCOUNT, "timestamp": TS, "signature": "0" * 64})),
    (
        "forged-rebill",
        _dumps(
            {
                "type": "rebill.lines",
                "account_id": ACCOUNT,
                "timestamp": TS,
                "run_id": "forged",
                "lines": [
                    {
                        "hour": TS,
                        "api_key_id": "k",
                        "item": "xingchen-plus",
                        "requests": 1.0,
                        "input_tokens": 0,
                        "output_tokens": 0,
                        "free_tokens": 0,
                        "billed_input_tokens": 0,
                        "billed_output_tokens": 0,
                        "quantity": 0,
                        "amount": "0",
                    }
                ],
            }
        ),
    ),
    ("forged-barrier", _dumps({"type": "billing.barrier", "barrier_id": "forged"})),
] + [(f"timestamp:{ts!r}", _dumps(_usage(timestamp=ts))) for ts in TIMESTAMPS]

# Named cases that are well-formed: they must parse (to Usage or AccountRecord), whatever the fold
# then makes of them.
MUST_PARSE: list[tuple[str, bytes]] = [
    ("minus-zero", _with_literal(_usage(event_id="ok-minus-zero"), ("output_tokens",), "-0")),
    ("minus-zero-float", _with_literal(_usage(event_id="ok-minus-zero-float"), ("output_tokens",), "-0.0")),
    ("zero-fraction", _with_literal(_usage(event_id="ok-zero-fraction"), ("input_tokens",), "12.0")),
    ("exponent", _with_literal(_usage(event_id="ok-exponent"), ("input_tokens",), "1e2")),
    ("maximum-output", _with_literal(_usage(event_id="ok-max-output"), ("output_tokens",), "1000000000")),
    ("duplicate-key-last-good", _dumps(_usage(event_id="ok-dup-key", input_tokens=True))[:-1] + b',"input_tokens":7}'),
    ("emoji-event-id", _dumps(_usage(event_id="😀👩‍👩‍👧‍👦"))),
    ("surrogate-pair-escape", _with_literal(_usage(), ("event_id",), '"ok-\\ud83d\\ude00"')),
    ("nul-event-id", _dumps(_usage(event_id="ok\u0000nul"))),
    ("rtl-account", _dumps(_usage(account_id="\u202eacct\u202c", event_id="ok-rtl"))),
    ("sql-event-id", _dumps(_usage(event_id="'; DROP TABLE bill_lines; --"))),
    ("sql-model", _dumps(_usage(event_id="ok-sql-model", model="'; DROP TABLE bill_lines; --"))),
    ("sql-key", _dumps(_usage(event_id="ok-sql-key", api_key_id="' OR 1=1 --"))),
    ("sql-plugin", _dumps(_usage(event_id="ok-sql-plugin", plugins={"'; DROP TABLE bill_lines; --": 1}))),
    (
        "sql-key-created",
        _dumps({"type": "api_key.created", "account_id": ACCOUNT, "timestamp": TS, "api_key_id": "'; DROP TABLE bill_lines; --"}),
    ),
    ("max-length-ids", _dumps(_usage(event_id="e" * 128, api_key_id="k" * 128, account_id="a" * 128))),
    ("zero-count-unknown-plugin", _dumps(_usage(event_id="ok-zero-plugin", plugins={"no-such-plugin": 0}))),
    ("explicit-defaults", _dumps(_usage(event_id="ok-defaults", type="usage", channel="api", plugins={}))),
    ("pretty-printed", json.dumps(_usage(event_id="ok-pretty"), indent=4).encode()),
    (
        "voucher-max-amount",
        _dumps(
            {
                "type": "credit.voucher",
                "account_id": ACCOUNT,
                "timestamp": TS,
                "voucher_id": "v-max",
                "amount": "999999999999.999999",
                "expires_at": "2099-12-31T23:59:59Z",
            }
        ),
    ),
    # the largest recharge the schema takes, twice: the second would overflow the cash balance (out_of_range)
    ("recharge-max", _dumps({"type": "credit.recharge", "account_id": "hostile-rich", "timestamp": TS, "amount": "999999999999.999999"})),
    (
        "recharge-overflow",
        _dumps({"type": "credit.recharge", "account_id": "hostile-rich", "timestamp": "2024-09-18T10:00:01+08:00", "amount": "0.000001"}),
    ),
    ("limits-zero", _dumps({"type": "limits.set", "account_id": ACCOUNT, "timestamp": TS, "qps": 0, "qpm": 0, "tpm": 0})),
    ("limits-max", _with_literal({"type": "limits.set", "account_id": ACCOUNT, "timestamp": TS}, ("tpm",), "1e9")),
] + [(f"good-timestamp:{ts!r}", _dumps(_usage(event_id=f"ok-ts-{i}", timestamp=ts))) for i, ts in enumerate(GOOD_TIMESTAMPS)]


class _Hostile:
    def __init__(self, rng: random.Random, templates: list[dict[str, Any]]):
        self.rng = rng
        self.templates = templates
        self.serial = 0

    def template(self) -> dict[str, Any]:
        return dict(self.rng.choice(self.templates))

    def fresh_id(self, prefix: str = "hx") -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def any_string(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            return rng.choice(SQL)
        if pick < 0.6:
            return rng.choice(UNICODE)
        if pick < 0.75:
            return rng.choice(UNICODE) * rng.choice((1, 10, 100))
        if pick < 0.9:
            return rng.choice("xé😀\u202e\u0000'") * rng.choice((0, 1, 64, 65, 128, 129, 5000, 40_000))
        return "".join(
            chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0xD7FF), rng.randrange(0xE000, 0x10FFFF))))
            for _ in range(rng.randrange(1, 40))
        )

    # -- families -------------------------------------------------------------------------------

    def random_bytes(self) -> bytes:
        rng = self.rng
        size = rng.choice((0, 1, 2, 8, 64, 512, 4096, MAX_RECORD_BYTES + rng.randrange(1, 100)))
        data = rng.randbytes(size)
        if rng.random() < 0.3:  # looks like JSON at first
            data = b'{"account_id":"' + data
        return data

    def invalid_utf8(self) -> bytes:
        rng = self.rng
        text = _dumps(self.template())
        bad = rng.choice(
            (b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe6\x98", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80")
        )
        at = rng.randrange(len(text) + 1)
        return text[:at] + bad + text[at:]

    def truncated(self) -> bytes:
        text = _dumps(self.template())
        return text[: self.rng.randrange(len(text))]

    def number(self) -> bytes:
        rng = self.rng
        body = self.template()
        numeric = [k for k, v in body.items() if isinstance(v, int)] or ["input_tokens"]
        path: tuple[str, ...] = (rng.choice(numeric + ["input_tokens", "output_tokens"]),)
        if rng.random() < 0.2:
            path = (rng.choice(("plugins", "input_breakdown")), rng.choice(("text_to_image", "web_search", "history")))
        if "event_id" in body:
            body["event_id"] = self.fresh_id("num")
        return _with_literal(body, path, rng.choice(NUMBERS))

    def nested(self) -> bytes:
        rng = self.rng
        depth = rng.choice((2, 50, 500, 900, 990, 1000, 1010, 1020, 1023, 1024, 1025, 2000, 10_000))
        text = _nested(depth, rng.choice(("array", "object")))
        if rng.random() < 0.25:
            return text.encode()
        body = self.template()
        field = rng.choice(("type", "account_id", "event_id", "model", "input_tokens", "timestamp", "amount", "channel", "extra"))
        return _with_literal(body, (field,), text)

    def long_string(self) -> bytes:
        rng = self.rng
        body = self.template()
        field = rng.choice([k for k in body if isinstance(body[k], str) and k != "type"] + ["event_id"])
        body[field] = rng.choice("a😀\u202e'") * rng.choice((127, 128, 129, 1000, 16_000, 60_000, 70_000))
        return _dumps(body)

    def strange_string(self) -> bytes:
        """Unicode or SQL in a string field; sometimes as raw escapes (lone surrogates)."""
        rng = self.rng
        body = self.template()
        field = rng.choice([k for k in body if isinstance(body[k], str)] + ["event_id", "api_key_id"])
        if rng.random() < 0.3:
            return _with_literal(body, (field,), '"' + rng.choice(ESCAPES) + '"')
        value = self.any_string()
        if field == "event_id" or rng.random() < 0.3:
            value = value + self.fresh_id("") if rng.random() < 0.5 else value
        body[field] = value
        if rng.random() < 0.2:
            body["plugins"] = {self.any_string()[:64] or "p": rng.randrange(0, 3)}
        return _dumps(body)

    def missing_fields(self) -> bytes:
        rng = self.rng
        body = self.template()
        for key in rng.sample(list(body), rng.randrange(1, len(body) + 1)):
            del body[key]
        return _dumps(body)

    def extra_fields(self) -> bytes:
        rng = self.rng
        body = self.template()
        for _ in range(rng.randrange(1, 4)):
            body[rng.choice(("extra", "cost", "amount", "price", "__proto__", "constructor", self.any_string()[:40]))] = rng.choice(
                JUNK_VALUES
            )
        return _dumps(body)

    def wrong_type(self) -> bytes:
        rng = self.rng
        body = self.template()
        field = rng.choice(list(body) + ["plugins", "channel", "input_breakdown"])
        value = rng.choice(JUNK_VALUES)
        if field == "plugins":
            value = rng.choice(({"text_to_image": True}, {"web_search": 1.5}, {"function_call": -1}, {"x": None}, value))
        elif field == "input_breakdown":
            value = rng.choice(({"history": True}, {"history": 1, "extra": 1}, {"role_setting": "5"}, value))
        elif field in ("input_tokens", "output_tokens", "qps", "qpm", "tpm") and rng.random() < 0.6:
            value = rng.choice((True, False))  # a bool is not an integer token count
        body[field] = value
        if body.get("type", "usage") == "usage" and field != "event_id":
            body["event_id"] = self.fresh_id("wt")
        return _dumps(body)

    def timestamp(self) -> bytes:
        rng = self.rng
        body = self.template()
        field = "expires_at" if body.get("type") == "credit.voucher" and rng.random() < 0.5 else "timestamp"
        body[field] = rng.choice(TIMESTAMPS + GOOD_TIMESTAMPS)
        if "event_id" in body:
            body["event_id"] = self.fresh_id("ts")
        return _dumps(body)

    def shapeless(self) -> bytes:
        rng = self.rng
        return rng.choice(
            (
                b"{}",
                b"[]",
                b"null",
                b"true",
                b"false",
                b"0",
                b"-0",
                b'""',
                b"[{}]",
                b"[null]",
                b"{}{}",
                b'{"type":"usage"}',
                b'{"account_id":null}',
                b'{"account_id":"' + ACCOUNT.encode() + b'"}',
                b'{"":""}',
                b"\x00",
                b"\n",
                b"{" * rng.randrange(1, 50),
                b"}" * rng.randrange(1, 50),
                _dumps([self.template()]),
                _dumps(None),
                b'"' + _dumps(self.template()) + b'"',
            )
        )

    def duplicate_keys(self) -> bytes:
        rng = self.rng
        body = self.template()
        text = _dumps(body)[:-1]
        key = rng.choice(list(body) + ["input_tokens", "type"])
        value = rng.choice(JUNK_VALUES + (body.get(key, 1), "usage", "xingchen-max", 7))
        dup = b"," + json.dumps(key).encode() + b":" + _dumps(value)
        if rng.random() < 0.5:  # the duplicate first, the original last
            return b"{" + dup[1:] + b"," + text[1:] + b"}"
        return text + dup + b"}"

    def mutated(self) -> bytes:
        """A valid-looking record with one plausible field changed: a few bill, most are rejected."""
        rng = self.rng
        body = self.template()
        kind = body.get("type", "usage")
        if kind == "usage":
            change = rng.choice(
                ("model", "plugin", "input", "context", "key", "account", "conflict", "channel", "fresh", "fresh", "negative", "console")
            )
            if change != "conflict":
                body["event_id"] = self.fresh_id("mut")
            if change == "model":
                body["model"] = rng.choice(("xingchen-ultra", "XINGCHEN-LITE", "xingchen-lite ", "", "gpt-4", "xingchen-longcontext"))
            elif change == "plugin":
                body["plugins"] = {
                    rng.choice(("text_to_image", "image_to_video", "rejection", "TEXT_TO_IMAGE")): rng.randrange(0, 1_000_001)
                }
            elif change == "input":
                body["input_tokens"] = rng.choice((6_501, 30_001, 32_000, 32_001, 999_999_999))
            elif change == "context":
                body["output_tokens"] = rng.choice((1_500, 8_000, 32_000, 1_000_000_000))
            elif change == "key":
                body["api_key_id"] = rng.choice(("sk-unknown", "", "sk-" + "0" * 24))
            elif change == "account":
                body["account_id"] = rng.choice((ACCOUNT, "", "0", body.get("account_id", "") + " "))
            elif change == "conflict":
                body["input_tokens"] = int(body.get("input_tokens", 0)) + 1 if isinstance(body.get("input_tokens"), int) else 1
            elif change == "channel":
                body["channel"] = rng.choice(("console", "Console", "web", ""))
            elif change == "negative":
                body[rng.choice(("input_tokens", "output_tokens"))] = -rng.randrange(1, 1000)
            elif change == "console":
                body["channel"] = "console"
        else:
            field = rng.choice([k for k in body if k != "type"] or ["account_id"])
            body[field] = rng.choice(("", "x", "'; DROP TABLE bill_lines; --", body[field] if field in body else "x"))
            if rng.random() < 0.3:
                body["type"] = rng.choice(("api_key.created", "api_key.revoked", "credit.recharge", "limits.set", "whitelist.add"))
        return _dumps(body)

    FAMILIES: tuple[tuple[str, float], ...] = (
        ("random_bytes", 6),
        ("invalid_utf8", 5),
        ("truncated", 5),
        ("number", 9),
        ("nested", 5),
        ("long_string", 5),
        ("strange_string", 10),
        ("missing_fields", 6),
        ("extra_fields", 5),
        ("wrong_type", 9),
        ("timestamp", 9),
        ("shapeless", 4),
        ("duplicate_keys", 6),
        ("mutated", 16),
    )

    def one(self) -> bytes:
        names, weights = zip(*self.FAMILIES)
        maker: Callable[[], bytes] = getattr(self, self.rng.choices(names, weights)[0])
        return maker()


def hostile_corpus(n: int = 10000, seed: int = 7) -> list[bytes]:
    """`n` records (the named cases first among them, in random places), the same for the same arguments."""
    rng = random.Random(seed)
    n_valid = int(n * VALID_SHARE)
    valid = [line.encode("utf-8") for line in generate(max(n_valid, 1), seed=seed, accounts=6)][:n_valid]
    templates = []
    for line in valid:
        try:
            body = json.loads(line)
        except ValueError:
            continue
        if isinstance(body, dict):
            templates.append(body)
    templates = templates or [_usage()]
    named = [raw for _, raw in MUST_BE_INVALID + MUST_PARSE]
    maker = _Hostile(rng, templates)
    n_hostile = n - n_valid
    hostile = named[:n_hostile] + [maker.one() for _ in range(max(n_hostile - len(named), 0))]
    rng.shuffle(hostile)
    # merge: valid records keep their publish order, hostile ones fall in between at random
    slots = sorted(rng.sample(range(n), n_valid))
    out: list[bytes] = []
    vi = hi = 0
    for i in range(n):
        if vi < len(slots) and slots[vi] == i:
            out.append(valid[vi])
            vi += 1
        else:
            out.append(hostile[hi])
            hi += 1
    return out
