"""ftctl: the command-line client for FineTuneJobs."""

__version__ = "0.1.0"
