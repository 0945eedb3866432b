"""How records travel in Kafka messages: one record, or an account's consecutive records as an
RFC 7464 JSON text sequence (RS before each JSON text, LF after), each keeping its bytes.

JSON text never contains a raw RS byte, so a leading RS tells the two apart without ambiguity.
"""

from __future__ import annotations

RS = b"\x1e"


def encode_group(records: list[bytes]) -> bytes:
    """One record as it is; several as a JSON text sequence."""
    if len(records) == 1:
        return records[0]
    return b"".join(RS + record + b"\n" for record in records)


def split_message(value: bytes) -> list[bytes]:
    """The records of a message, in order."""
    if not value.startswith(RS):
        return [value]
    return [part[:-1] if part.endswith(b"\n") else part for part in value.split(RS)[1:]]
