"""The ``jukinet`` command: one module per command group."""

from jukinet.cli.main import main

__all__ = ["main"]
