"""The one-time free token quota: input tokens of a call before its output tokens."""

import pytest

from pipeline.core.quota import split_free


@pytest.mark.parametrize(
    "remaining, inp, out, free_in, free_out",
    [
        (1_000_000, 100, 50, 100, 50),  # plenty left: the whole call is free
        (150, 100, 50, 100, 50),  # exactly enough
        (120, 100, 50, 100, 20),  # straddles in the output
        (100, 100, 50, 100, 0),  # ends exactly after the input
        (60, 100, 50, 60, 0),  # straddles in the input
        (0, 100, 50, 0, 0),  # exhausted
        (-5, 100, 50, 0, 0),  # over-used counts as exhausted, never as a negative split
        (10, 0, 50, 0, 10),  # output-only call
        (10, 0, 0, 0, 0),
    ],
)
def test_split_free(remaining, inp, out, free_in, free_out):
    assert split_free(remaining, inp, out) == (free_in, free_out)
    assert 0 <= free_in + free_out <= max(remaining, 0)
