"""Usage metering and hourly billing for the xingchen role-play API (see README.md)."""

__version__ = "0.1.0"
