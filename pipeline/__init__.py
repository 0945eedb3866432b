"""Usage metering and hourly billing for the xingchen role-play API (see README.md)."""

from pipeline.compiled import choose

__version__ = "0.1.0"
CORE_BUILD = choose()  # before any core module is imported: compiled, or the sources if stale
