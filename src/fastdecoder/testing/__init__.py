"""Shared test support (as ``numpy.testing``): the plain-Python CTC oracles, reproducible seeds for random tests,
the tiny synthetic data section and the tiny causal LM that the test suite, the fuzz run and the benchmarks use.
Nothing here is imported by the rest of the package."""
