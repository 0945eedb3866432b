"""Bytes from the topic -> Usage, AccountRecord or Invalid (schemas in schemas/records/)."""

import json

import pytest
from helpers import ACCOUNT, KEY, T0, key_created, limits, parse, recharge, us, usage, voucher

from pipeline.core import records
from pipeline.core.records import MAX_RECORD_BYTES, AccountRecord, Invalid, Usage, parse_record


def test_usage_fields_and_defaults():
    rec = parse(usage("ev-9", input_tokens=120, output_tokens=30))
    assert isinstance(rec, Usage)
    assert rec.kind == "usage"
    assert rec.account_id == ACCOUNT
    assert rec.event_id == rec.identity == "ev-9"
    assert rec.api_key_id == KEY
    assert rec.model == "xingchen-base"
    assert (rec.input_tokens, rec.output_tokens) == (120, 30)
    assert rec.ts_us == us(T0)
    assert rec.channel == "api"
    assert rec.plugins == ()
    assert json.loads(rec.raw) == usage("ev-9", input_tokens=120, output_tokens=30)


def test_usage_console_channel_and_plugins_sorted_zero_dropped():
    rec = parse(usage(channel="console", plugins={"web_search": 1, "text_to_image": 2, "function_call": 0}))
    assert rec.channel == "console"
    assert rec.plugins == (("text_to_image", 2), ("web_search", 1))


def test_input_breakdown_is_accepted_and_kept_raw():
    body = usage(input_breakdown={"role_setting": 10, "history": 20, "long_term_memory": 30, "web_search": 40})
    rec = parse(body)
    assert isinstance(rec, Usage)
    assert rec.input_tokens == 100  # the breakdown is not billed on top
    assert json.loads(rec.raw)["input_breakdown"]["history"] == 20


def test_explicit_defaults_have_the_same_digest():
    plain = parse(usage())
    explicit = parse(dict(usage(), type="usage", channel="api"))
    empty_plugins = parse(dict(usage(), plugins={}))
    zero_plugin = parse(dict(usage(), plugins={"text_to_image": 0}))
    reordered = records.parse_record(json.dumps(dict(reversed(list(usage().items())))).encode())
    assert plain.digest == explicit.digest == empty_plugins.digest == zero_plugin.digest == reordered.digest


def test_payload_changes_change_the_digest():
    base = parse(usage()).digest
    assert parse(usage(input_tokens=101)).digest != base
    assert parse(usage(channel="console")).digest != base
    assert parse(usage(plugins={"web_search": 1})).digest != base
    assert parse(usage(key="key-2")).digest != base


def test_integral_floats_are_counts():
    # JSON Schema counts 10.0 as an integer; the pipeline must count in ints (Decimal * float crashes)
    rec = parse(usage(input_tokens=10.0, output_tokens=1e3, plugins={"text_to_image": 2.0}))
    assert isinstance(rec, Usage)
    assert type(rec.input_tokens) is int and rec.input_tokens == 10
    assert type(rec.output_tokens) is int and rec.output_tokens == 1000
    assert rec.plugins == (("text_to_image", 2),)
    assert type(rec.plugins[0][1]) is int
    assert rec.digest == parse(usage(input_tokens=10, output_tokens=1000, plugins={"text_to_image": 2})).digest
    lim = parse(limits(qps=5.0))
    assert type(lim.fields["qps"]) is int


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in usage().items() if k != "event_id"},
        {k: v for k, v in usage().items() if k != "timestamp"},
        {k: v for k, v in usage().items() if k != "api_key_id"},
        {k: v for k, v in usage().items() if k != "model"},
        {k: v for k, v in usage().items() if k != "input_tokens"},
        {k: v for k, v in usage().items() if k != "output_tokens"},
        usage(input_tokens="100"),
        usage(input_tokens=10.5),
        usage(output_tokens=None),
        usage(input_tokens=True),
        usage(input_tokens=-1),
        usage(output_tokens=-5),
        usage(input_tokens=1_000_000_001),
        usage(event_id=""),
        usage(event_id=7),
        usage(model=""),
        usage(key=""),
        usage(account=""),
        usage(ts="2024-06-07T10:00:00"),  # naive
        usage(ts="2024-13-07T10:00:00+08:00"),  # month 13
        usage(ts="2024-06-31T10:00:00+08:00"),
        usage(ts="2024-06-07T10:00:00+0800"),
        usage(ts="07/06/2024 10:00"),
        usage(ts=1717725600),
        usage(channel="web"),
        usage(plugins={"text_to_image": -1}),
        usage(plugins={"text_to_image": "2"}),
        usage(plugins={"text_to_image": 1_000_001}),
        usage(plugins=["text_to_image"]),
        usage(input_breakdown={"other": 1}),
        usage(extra_field=1),
        dict(usage(), type="usage.v2"),
        dict(usage(), type="api_key.created"),  # usage fields under another type
        dict(usage(), type=None),
        dict(key_created(), event_id="x"),
        {k: v for k, v in key_created().items() if k != "api_key_id"},
        recharge("-1"),
        recharge("1.1234567"),
        recharge(10),
        voucher("v1", "5", expires_at="2024-06-07"),
        voucher("v1", "5", expires_at="2024-02-30T00:00:00Z"),
        limits(qps=-1),
        limits(tpm="1000"),
        {"type": "whitelist.add", "account_id": ACCOUNT, "timestamp": T0},
        {},
    ],
)
def test_schema_violations_are_invalid(body):
    rec = parse(body)
    assert isinstance(rec, Invalid)
    assert rec.kind == "invalid"
    assert rec.detail
    assert rec.identity.startswith("raw:")
    assert rec.ts_us is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b'{"account_id": "a"', b"[1, 2]", b'"usage"', b"42", b"null", b"\xff\xfe{}", b'{"a": NaN}'],
)
def test_non_objects_are_invalid(raw):
    rec = parse_record(raw)
    assert isinstance(rec, Invalid)
    assert rec.raw == raw.decode("utf-8", errors="replace")


def test_invalid_keeps_account_and_event_id_when_readable():
    rec = parse(usage("ev-bad", input_tokens=-1))
    assert rec.account_id == ACCOUNT
    assert rec.event_id == "ev-bad"
    assert parse(usage(event_id=7)).event_id == ""


def test_invalid_account_comes_from_message_key_when_unreadable():
    rec = parse_record(b"garbage", key_account="acct-key")
    assert isinstance(rec, Invalid)
    assert rec.account_id == "acct-key"


def test_invalid_identity_is_a_digest_of_the_bytes():
    a = parse_record(b"garbage")
    b = parse_record(b"garbage")
    c = parse_record(b"garbage!")
    assert a.identity == b.identity != c.identity


def test_account_must_match_message_key():
    assert isinstance(parse(usage(), key_account=ACCOUNT), Usage)
    rec = parse(usage(), key_account="someone-else")
    assert isinstance(rec, Invalid)
    assert "differs" in rec.detail


def test_oversized_record_is_invalid():
    body = usage()
    raw = json.dumps(body).encode()
    raw = raw[:-1] + b" " * (MAX_RECORD_BYTES - len(raw) + 1) + b"}"
    assert len(raw) > MAX_RECORD_BYTES
    rec = parse_record(raw)
    assert isinstance(rec, Invalid)
    assert "limit" in rec.detail


@pytest.mark.parametrize(
    "body, kind, fields",
    [
        (key_created("k9"), "api_key.created", {"api_key_id": "k9"}),
        ({"type": "api_key.revoked", "account_id": ACCOUNT, "timestamp": T0, "api_key_id": "k9"}, "api_key.revoked", {"api_key_id": "k9"}),
        (recharge("12.5"), "credit.recharge", {"amount": "12.5"}),
        (
            voucher("v1", "3", expires_at="2024-07-01T00:00:00+08:00"),
            "credit.voucher",
            {"voucher_id": "v1", "amount": "3", "expires_at": "2024-07-01T00:00:00+08:00"},
        ),
        (limits(qps=3, tpm=5000), "limits.set", {"qps": 3, "tpm": 5000}),
        (limits(), "limits.set", {}),
        ({"type": "whitelist.add", "account_id": ACCOUNT, "timestamp": T0, "model": "m"}, "whitelist.add", {"model": "m"}),
        ({"type": "whitelist.remove", "account_id": ACCOUNT, "timestamp": T0, "model": "m"}, "whitelist.remove", {"model": "m"}),
    ],
)
def test_account_records(body, kind, fields):
    rec = parse(body)
    assert isinstance(rec, AccountRecord)
    assert rec.kind == kind
    assert rec.account_id == ACCOUNT
    assert rec.ts_us == us(body["timestamp"])
    assert rec.fields == fields
    assert rec.identity == f"#{kind}:{rec.digest}"


def test_account_record_identity_is_its_content():
    assert parse(recharge("5")).identity == parse(dict(reversed(list(recharge("5").items())))).identity
    assert parse(recharge("5")).identity != parse(recharge("6")).identity
    assert parse(recharge("5")).identity != parse(recharge("5", ts="2024-06-07T10:00:01+08:00")).identity
    assert parse(key_created("k1")).identity != parse(key_created("k1", account="acct-2")).identity


@pytest.mark.parametrize("record_id, stored", [("evt-1", 5142162847298372542), ("ключ-東京-🙂", 3991245291496767935)])
def test_record_hash_is_the_one_seen_records_holds(record_id, stored):
    """seen_records is looked up by this hash: a different value for an id already stored would
    miss it, and the record would be billed twice. Pinned (BLAKE2b, 8 bytes, little-endian)."""
    assert records.record_hash(record_id) == stored
    assert records.record_hash(record_id) == stored  # the shared hasher state is copied, never changed


def test_a_parsed_record_carries_the_hash_of_its_identity():
    """The worker looks identities up in seen_records, and writes them, by the hash the record
    carries: it must be record_hash of the identity, whichever path parsed the record."""
    generic = usage("evt-generic", input_tokens=2.0)  # a count written 2.0 takes the generic validator
    for rec in (parse(usage("evt-hash")), parse(generic), parse(recharge("5")), parse(key_created("k1"))):
        assert rec.identity_hash == records.record_hash(rec.identity)
    assert parse(usage("evt-1")).identity_hash == 5142162847298372542


# -- messages without a key (records.UNKEYED): on an input topic of several partitions -----------


def _unkeyed(body: dict, **kw) -> records.Record:
    from helpers import CONTROL_KEY

    from pipeline.core import control

    return parse_record(control.sign_line(json.dumps(body).encode(), CONTROL_KEY), "", CONTROL_KEY, require_key=True, **kw)


@pytest.mark.parametrize("body", [usage("ev-unkeyed"), recharge("5.00"), key_created(), limits(qps=3), voucher("v-1", "2.00")])
def test_a_publishers_record_without_a_message_key_is_refused_with_what_to_do(body) -> None:
    record = _unkeyed(body)
    assert isinstance(record, Invalid) and record.reason == "invalid_schema"
    assert record.detail == records.UNKEYED and "account_id as the message key" in record.detail
    assert record.account_id == ACCOUNT  # listed under its account, as received
    assert record.event_id == body.get("event_id", "")
    assert json.loads(record.raw) == body


@pytest.mark.parametrize("body", [usage("ev-keyed"), recharge("5.00")])
def test_the_same_record_with_its_key_or_on_one_partition_is_read(body) -> None:
    raw = json.dumps(body).encode()
    keyed = parse_record(raw, ACCOUNT, require_key=True)
    assert not isinstance(keyed, Invalid)
    assert parse_record(raw, "", require_key=False) == keyed  # one partition: order holds without keys


def test_a_schema_break_without_a_key_keeps_its_own_reason() -> None:
    broken = _unkeyed({**usage("ev-broken"), "input_tokens": -1})
    assert isinstance(broken, Invalid) and broken.detail != records.UNKEYED and "input_tokens" in broken.detail


def test_the_pipelines_own_control_records_need_no_key() -> None:
    """Ticks and rebill revisions are placed by the tools that sign them."""
    tick = _unkeyed({"type": "clock.tick", "account_id": ACCOUNT, "timestamp": T0})
    assert not isinstance(tick, Invalid) and tick.kind == "clock.tick"


def test_a_replay_refuses_again_what_its_message_refused() -> None:
    """The archive keeps a refused record's bytes, not its message's key: a replay's verdict on
    one that parses now is the refusal, with the worker's identity for those bytes."""
    body = usage("ev-replayed")
    raw = json.dumps(body).encode()
    arrived = parse_record(raw, "", require_key=True)
    again = records.refused_on_arrival(raw, ACCOUNT)
    assert isinstance(arrived, Invalid) and isinstance(again, Invalid)
    assert again.identity == arrived.identity and again.kind == arrived.kind == records.INVALID_KIND
    assert again.reason == "invalid_schema" and "a replay refuses it again" in again.detail
