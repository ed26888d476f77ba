"""finetune_trainer: the training program that runs inside every FineTuneJob pod.

Importing this package must stay cheap (no torch): the operator imports its contract and config.
"""

__version__ = "0.1.0"
