"""Pipeline definitions (`create_pipeline`), bundled data sets and the local runner."""
