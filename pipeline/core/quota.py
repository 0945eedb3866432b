"""The one-time free token quota (BILLING_RULES §5): input tokens of a call before its output."""

from __future__ import annotations


def free_left(quota_tokens: int, used_tokens: int) -> int:
    """Tokens of the one-time quota an account has left: never negative (a catalog that lowered
    the quota below what an account already used leaves it none). What the fold splits calls
    against and what `billing account` shows as `free_tokens_left`."""
    return max(quota_tokens - used_tokens, 0)


def split_free(remaining: int, input_tokens: int, output_tokens: int) -> tuple[int, int]:
    """(free input, free output): how much of a call the remaining quota covers; the rest of the
    call is billed. A plain tuple, not a NamedTuple: compiled, it is returned unboxed (setup.py)."""
    remaining = max(remaining, 0)
    free_input = min(input_tokens, remaining)
    free_output = min(output_tokens, remaining - free_input)
    return free_input, free_output
