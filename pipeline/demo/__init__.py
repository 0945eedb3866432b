"""Demo and test data, outside the runtime path: `billing up --demo`, the bench and the tests
generate records here. Nothing in the worker imports it."""
