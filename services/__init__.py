"""The federation's nodes, one package per tier: municipal, prefecture, national."""
