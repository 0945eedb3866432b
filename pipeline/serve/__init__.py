"""What a running worker serves: the query API, the console, Prometheus metrics."""
