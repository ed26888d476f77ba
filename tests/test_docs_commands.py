"""The commands README.md and docs/*.md show (their ```bash blocks) hold, as far as this machine can
run them without a GPU cluster, a registry or a Docker engine:

- `ftctl ...`: parsed by ftctl's own command-line parser (command, options, arguments);
- `finetune-operator ...`: each option is one the operator accepts (its --help);
- `helm install|upgrade ... charts/...`: rendered with `helm template` and the same values;
- `kubectl VERB ...`: each flag is one `kubectl VERB --help` lists; files given with -f exist;
- `make TARGET`: the Makefile has the target;
- `docker build -f FILE --build-arg NAME=...`: FILE exists and declares `ARG NAME`;
- `python -m pytest PATH -m MARK`: the paths exist, the markers are registered;
- any other path the command names (examples/, hack/, crds/...) exists.

Every command is either checked or listed as not checkable with the reason (printed with -s);
a fixed minimum of checked commands keeps the test from passing on an empty harvest.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Values for the variables the docs leave to the reader.
VARIABLES = {"REG": "registry.example.com/ml", "PWD": str(REPO), "PORT": "9000", "RELEASE": "finetune-operator",
             "NAMESPACE": "finetune-system", "PATH": os.environ.get("PATH", "")}
SEPARATORS = {"&&", "||", "|", ";"}


def blocks() -> list[tuple[str, str]]:
    """(where, command line) for every command of every ```bash/```sh block."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"```(?:bash|sh)\n(.*?)```", text, re.S):
            line_no = text[: m.start()].count("\n") + 2
            joined = re.sub(r"\\\n\s*", " ", m.group(1))
            for i, line in enumerate(joined.splitlines()):
                if line.strip() and not line.lstrip().startswith("#"):
                    out.append((f"{doc.relative_to(REPO)}:{line_no + i}", line))
    return out


def commands(line: str) -> list[list[str]]:
    """The simple commands of a line, variables substituted, leading VAR=value assignments and
    `export` dropped."""
    expanded = re.sub(r"\$\(([^()]*)\)", "SUBSTITUTED", line)
    expanded = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: VARIABLES.get(m.group(1), m.group(0)), expanded)
    tokens = shlex.split(expanded, comments=True)
    cmds: list[list[str]] = [[]]
    for t in tokens:
        if t in SEPARATORS:
            cmds.append([])
        else:
            cmds[-1].append(t)
    result = []
    for cmd in cmds:
        if cmd and cmd[0] == "export":
            cmd = cmd[1:]
        while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            result.append(cmd)
    return result


@functools.cache
def bin_dir() -> Path:
    out = subprocess.run(["bash", "hack/build-control-plane.sh", "--print-bin"], cwd=REPO, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@functools.cache
def help_text(*cmd: str, flag: str = "--help") -> str:
    proc = subprocess.run([*cmd, *([flag] if flag else [])], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} {flag}: {proc.stderr}"
    return proc.stdout


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-"]


def check_flags(where: str, cmd: list[str], tool_help: str) -> list[str]:
    problems = []
    for flag in flags(cmd):
        short = re.fullmatch(r"-[A-Za-z]", flag)
        listed = re.search(rf"(^|[\s,]){re.escape(flag)}([=,\s\[]|$)", tool_help, re.M) if not short else re.search(rf"(^|\s){re.escape(flag)},", tool_help, re.M)
        if not listed:
            problems.append(f"{where}: `{' '.join(cmd)}`: {flag} is not an option of {cmd[0]} {cmd[1] if len(cmd) > 1 else ''}")
    return problems


def paths_exist(where: str, cmd: list[str]) -> list[str]:
    problems = []
    for a in cmd[1:]:
        value = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
        named = re.match(r"^(\./)?(examples|hack|crds|charts|operator|trainer_image|tests|docs|cli|bench)/", value)
        if named and not (REPO / value).exists():
            problems.append(f"{where}: `{' '.join(cmd)}`: {value} does not exist")
    return problems


def check_ftctl(where: str, cmd: list[str]) -> list[str]:
    import typer
    from ftctl.main import app

    group = typer.main.get_command(app)
    try:
        ctx = group.make_context("ftctl", cmd[1:], resilient_parsing=False)
        sub_name, sub, rest = group.resolve_command(ctx, cmd[1:])
        assert sub is not None
        sub.make_context(str(sub_name), rest, parent=ctx)
    except Exception as err:  # typer's own copy of click's UsageError / Exit
        if type(err).__name__ == "Exit":
            return []
        if hasattr(err, "format_message"):
            return [f"{where}: `{' '.join(cmd)}`: {err.format_message()}"]
        raise
    return []


def check_helm(where: str, cmd: list[str]) -> list[str]:
    reuse = any(a.startswith(("--reuse-values", "--reset-then-reuse-values")) for a in cmd)  # values of a release: not here
    if len(cmd) < 4 or cmd[1] not in ("install", "upgrade") or not cmd[3].startswith("charts/") or reuse:
        return check_flags(where, cmd, help_text(str(bin_dir() / "helm"), cmd[1]))
    args = [a for a in cmd[2:] if a not in ("--wait", "--create-namespace", "--reset-then-reuse-values")]
    proc = subprocess.run([str(bin_dir() / "helm"), "template", *args, "--kube-version", "1.34.0"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    problems = [] if proc.returncode == 0 else [f"{where}: `{' '.join(cmd)}` does not render: {proc.stderr.strip()[:500]}"]
    return problems + check_flags(where, cmd, help_text(str(bin_dir() / "helm"), cmd[1]))


def check_kubectl(where: str, cmd: list[str]) -> list[str]:
    kubectl = str(bin_dir() / "kubectl")
    words = []
    for a in cmd[1:4]:  # the command path: `create secret generic`, `get` (then a resource)
        if a.startswith("-"):
            break
        words.append(a)
    while words and subprocess.run([kubectl, *words, "--help"], capture_output=True, check=False).returncode != 0:
        words.pop()
    text = help_text(kubectl, *words) + help_text(kubectl, "options", flag="")
    return check_flags(where, cmd, text) + paths_exist(where, cmd)


def check_make(where: str, cmd: list[str]) -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    return [f"{where}: no make target {t!r}" for t in cmd[1:] if not t.startswith("-") and not re.search(rf"^{re.escape(t)}:", makefile, re.M)]


def check_docker(where: str, cmd: list[str]) -> list[str]:
    if cmd[1] != "build":
        return []
    problems = paths_exist(where, cmd)
    dockerfile = next((cmd[i + 1] for i, a in enumerate(cmd) if a == "-f"), "Dockerfile")
    if not (REPO / dockerfile).is_file():
        return [*problems, f"{where}: no {dockerfile}"]
    declared = set(re.findall(r"^ARG\s+([A-Z_]+)", (REPO / dockerfile).read_text(), re.M))
    for i, a in enumerate(cmd):
        if a == "--build-arg":
            name = cmd[i + 1].split("=", 1)[0]
            if name not in declared:
                problems.append(f"{where}: {dockerfile} declares no ARG {name}")
    return problems


def check_pytest(where: str, cmd: list[str]) -> list[str]:
    args = cmd[cmd.index("pytest") + 1:]
    markers = {m.split(":")[0].strip() for m in subprocess.run([sys.executable, "-m", "pytest", "--markers"], cwd=REPO, capture_output=True, text=True, check=False).stdout.splitlines() if m.startswith("@pytest.mark.")} if "-m" in args else set()
    problems = [f"{where}: {a} does not exist" for a in args if a.startswith("tests") and not (REPO / a).exists()]
    for i, a in enumerate(args):
        if a == "-m":
            for word in re.findall(r"[a-z_]+", args[i + 1]):
                if word not in ("not", "and", "or") and f"@pytest.mark.{word}" not in markers:
                    problems.append(f"{where}: marker {word!r} is not registered")
    return problems


def check_operator(where: str, cmd: list[str]) -> list[str]:
    return check_flags(where, cmd, help_text(sys.executable, "-m", "finetune_operator.main"))


CHECKS = {"ftctl": check_ftctl, "helm": check_helm, "kubectl": check_kubectl, "make": check_make, "docker": check_docker,
          "finetune-operator": check_operator}


def test_the_commands_the_docs_show_hold() -> None:
    checked, skipped, problems = [], [], []
    for where, line in blocks():
        for cmd in commands(line):
            tool = Path(cmd[0]).name
            if "..." in cmd:
                skipped.append(f"{where}: {' '.join(cmd)} (a fragment)")
                continue
            if tool in ("python", "python3") and "pytest" in cmd:
                problems += check_pytest(where, cmd)
            elif tool in CHECKS:
                problems += CHECKS[tool](where, cmd)
            elif cmd[0].startswith(("hack/", "examples/")) or (tool == "bash" and len(cmd) > 1):
                problems += paths_exist(where, [cmd[0], *cmd])
            else:
                skipped.append(f"{where}: {' '.join(cmd)}")
                continue
            checked.append(f"{where}: {' '.join(cmd)}")
    print(f"\nchecked {len(checked)} commands; not checkable here ({len(skipped)}):\n  " + "\n  ".join(skipped))
    assert not problems, "\n".join(problems)
    assert len(checked) >= 35, checked


@pytest.mark.parametrize(
    ("line", "wrong"),
    [
        ("ftctl wait job -n team-a --timout 2h", "No such option"),
        ("ftctl donwload job ./out", "No such command"),
        ("helm install x charts/finetune-operator --set image.repository=r/op", "trainerImage is required"),
        ("kubectl apply -f examples/no-such.yaml", "does not exist"),
        ("make no-such-target", "no make target"),
        ("docker build -f operator/Dockerfile --build-arg NO_SUCH_ARG=1 .", "declares no ARG"),
        ("kubectl get ftj --all-namespace", "is not an option"),
    ],
)
def test_the_checks_catch_a_wrong_command(line: str, wrong: str) -> None:
    """Each check fails on the mistake it is there for."""
    problems = []
    for cmd in commands(line):
        problems += CHECKS[Path(cmd[0]).name]("doc:1", cmd)
    assert any(wrong in p for p in problems), problems
