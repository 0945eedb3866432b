"""Records as the batch processor receives them, without a broker: one record per message, each
account on a stable partition (crc32, not hash(): the same across runs), offsets from 0."""

from __future__ import annotations

import json
import zlib

from pipeline.batch.processor import Message


def one_record_messages(lines: list[str], partitions: int = 2, start: int = 0) -> list[Message]:
    """`start`: the first offset of every partition (a later batch of the same log)."""
    offsets = [start] * partitions
    out = []
    for line in lines:
        account = str(json.loads(line).get("account_id", ""))
        partition = zlib.crc32(account.encode()) % partitions
        out.append(Message(partition, offsets[partition], account.encode(), line.encode()))
        offsets[partition] += 1
    return out
