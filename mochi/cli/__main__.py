"""Allows ``python -m mochi.cli`` and ``torchrun -m mochi.cli pretrain ...``."""

from mochi.cli import main

main()
