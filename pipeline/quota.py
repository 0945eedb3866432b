"""The one-time free token quota (BILLING_RULES §5): input tokens of a call before its output."""

from __future__ import annotations

from typing import NamedTuple


class FreeSplit(NamedTuple):
    free_input: int
    free_output: int

    @property
    def free_tokens(self) -> int:
        return self.free_input + self.free_output


def split_free(remaining: int, input_tokens: int, output_tokens: int) -> FreeSplit:
    """How much of a call the remaining quota covers; the rest of the call is billed."""
    remaining = max(remaining, 0)
    free_input = min(input_tokens, remaining)
    free_output = min(output_tokens, remaining - free_input)
    return FreeSplit(free_input, free_output)
