"""finetune_operator: the kopf operator that turns FineTuneJobs into training pods."""

__version__ = "0.1.0"
