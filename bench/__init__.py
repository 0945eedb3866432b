"""Benchmark harness for the billing pipeline (not a test): `python -m bench --records N [--json]`.

An embedded broker started by the bench process and one `billing worker` process on it
(embedded ClickHouse) in a temporary data directory; then, on that broker and engine and over
the same generated records:

  (d) pipeline  the records are published first (`billing publish`, no worker running), then the
                worker starts: records/s from its first batch to `billing wait` returning, i.e.
                one worker from published records to queryable bills (startup reported apart)
      publish_and_process  a second, fresh workload published while the warm worker consumes:
                publish start -> `billing wait` returns (the figure (d) used to be)
  (a) raw       a bare aiokafka consumer reading the records (the Python ceiling here)
  (b) naive     a Faust agent as a user would write it first (Record + table update per event)
  (c) fold      the pure fold alone, in memory (parse + apply, one state per account)
  (e) rebill    `billing rebill` over the hours of every workload published, default catalog
  latency       publish -> queryable bill at a steady offered load (2,000 records/s)

`--profile DIR` runs the worker of (d) under py-spy and prints its top functions.
Every process it starts is stopped again, on errors and Ctrl-C too.
"""
