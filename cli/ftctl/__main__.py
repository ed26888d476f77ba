"""Run ftctl as a module: `python -m ftctl --help`."""

from .main import main

main()
