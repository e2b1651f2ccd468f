"""Shared test support (as ``numpy.testing``): the plain-Python CTC oracles, reproducible seeds for random tests,
the tiny synthetic data section and the tiny causal LM that the test suite, the fuzz run and the benchmarks use.
Nothing else in the package imports it, except ``fastdecoder.parity`` (its layer-mate), whose tiny training run is
built from the suite's (``tiny.tiny_config``)."""
