"""mochi: MoCo-v2 / MoCHi pretraining and downstream transfer evaluation.

Stages live in sub-packages and data flows one way:
``mochi.pretrain`` (images -> backbone checkpoint) -> ``mochi.transfer`` (checkpoint formats)
-> ``mochi.eval`` (features -> metrics -> result records). ``mochi.cli`` is a thin layer on top.
"""

__version__ = "0.1.0"
