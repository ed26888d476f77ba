"""Shell completion: `ftctl --install-completion` / `--show-completion` (typer) and the
completion protocol the installed script calls.

Run: .venv/bin/python -m pytest tests/cli/test_completion.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def complete(words: str) -> list[str]:
    """What bash completion offers for `words` (the last one being completed)."""
    env = {**os.environ, "_FTCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    proc = subprocess.run([sys.executable, "-m", "ftctl"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_commands_and_options_complete() -> None:
    assert complete("ftctl des") == ["describe"]
    assert set(complete("ftctl l")) == {"list", "logs"}
    assert "--previous" in complete("ftctl logs myjob --pre")
    assert {"--rank", "--attempt", "--since"} <= set(complete("ftctl logs myjob --"))


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_the_script_for_the_shell(shell: str) -> None:
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # no parent-shell detection
    proc = subprocess.run([sys.executable, "-m", "ftctl", "--show-completion", shell], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "_FTCTL_COMPLETE" in proc.stdout and f"complete_{shell}" in proc.stdout


def test_help_lists_the_completion_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "ftctl", "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert "--install-completion" in proc.stdout and "--show-completion" in proc.stdout
