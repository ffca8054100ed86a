"""The `finfed` command line."""

from finfed.cli.main import main

__all__ = ["main"]
