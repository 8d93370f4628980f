"""Evaluation: backbone -> features -> metrics -> result records -> tables."""
