"""Allows ``python -m mochi``: the same command as ``mochi``."""

from mochi.cli import main

main()
