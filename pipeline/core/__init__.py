"""The billing rules, pure: parsing and validating records, the fold, pricing, quota, windows,
settlement, the facts it produces. No Kafka, Faust or ClickHouse import, no I/O, no clock.

Every module in this folder is compiled with mypyc at install time (setup.py compiles the folder,
pipeline/compiled.py falls back to the sources after an edit): see docs/development.md for the
rules of editing it.
"""
