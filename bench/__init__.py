"""Benchmarks of the federation, run on the local federation (``make bench``)."""
