"""The worker around the batch processor: the Faust app, raw batches from its consumer, partition
placement, failure isolation, delivery of outputs before offsets are committed, rebills."""
