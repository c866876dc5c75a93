"""Developer tools run from a checkout: the demo, the local federation, sample data."""
