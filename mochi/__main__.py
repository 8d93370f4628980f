"""``python -m mochi``: the ``mochi`` command."""

from mochi.cli import main

main()
