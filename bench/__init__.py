"""Benchmark harness for the billing pipeline (not a test): `python -m bench --records N [--json]`.

One `billing up` (embedded broker + worker + chdb) in a temporary data directory, then, on the
same broker and engine and over the same generated records:

  (d) pipeline  `billing publish` + `billing wait`: published records -> queryable bills
  (a) raw       a bare aiokafka consumer reading the records (the Python ceiling here)
  (b) naive     a Faust agent as a user would write it first (Record + table update per event)
  (c) fold      the pure fold alone, in memory (parse + apply, one state per account)
  (e) rebill    `billing rebill` over the whole range of the records, default catalog
  latency       publish -> queryable bill at a steady offered load (2,000 records/s)

Every process it starts is stopped again, on errors and Ctrl-C too.
"""
