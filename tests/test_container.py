"""deploy/Dockerfile: what it installs, what it copies, who it runs as, its health check, and its entrypoint
(run here through the venv, the command the image runs)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# What the image may hold: the installed project and its named profiles, nothing else.
ALLOWED_COPIES = {"pyproject.toml", "constraints.txt", "README.md", "fusion_core/", "flows/", "tasks/"}
APT_PACKAGES = {"wget"}  # KubeRay's default probes
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|CREDENTIAL|STORE__DB", re.IGNORECASE)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments and blank lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, args = (current + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def _commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line, split on && || ; and tokenised like the shell."""
    return [shlex.split(part) for part in re.split(r"&&|\|\||;", run) if part.strip()]


def _exec_form(arg: str) -> list | None:
    """The argument list of an exec-form (JSON) ENTRYPOINT or CMD; None for the shell form."""
    try:
        return json.loads(arg)
    except ValueError:
        return None


def _pip_problems(tokens: list[str]) -> list[str]:
    args = tokens[tokens.index("install") + 1:]
    problems, constrained, targets = [], False, []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--constraint"):
            constrained = args[i + 1] == "constraints.txt"
            i += 2
            continue
        if arg in ("-e", "--editable"):
            targets.append(args[i + 1])
            i += 2
            continue
        if not arg.startswith("-"):
            targets.append(arg)
        i += 1
    if not constrained:
        problems.append(f"pip install without -c constraints.txt: {shlex.join(tokens)}")
    for target in targets:
        if not target.startswith("."):
            problems.append(f"pip installs {target!r}: only the project (with constraints.txt) may be installed")
    if not targets:
        problems.append(f"pip install of nothing: {shlex.join(tokens)}")
    return problems


def problems(text: str) -> list[str]:
    """Every way the Dockerfile breaks the image's rules; empty when it keeps them all."""
    found: list[str] = []
    ins = instructions(text)
    kinds = [kind for kind, _ in ins]
    args_of = {kind: [a for k, a in ins if k == kind] for kind in set(kinds)}

    base = next((a.split("=", 1)[1] for a in args_of.get("ARG", []) if a.startswith("BASE_IMAGE=")), "")
    if not base.startswith("python:3.11-slim") or args_of.get("FROM") != ["${BASE_IMAGE}"]:
        found.append(f"base image must be a slim Python 3.11 through ARG BASE_IMAGE (got {base!r})")

    copied_constraints = False
    pip_installs = 0
    for kind, arg in ins:
        if kind == "COPY":
            sources = shlex.split(arg)[:-1]
            copied_constraints |= "constraints.txt" in sources
            found += [f"COPY {s}: not part of the image" for s in sources if s not in ALLOWED_COPIES]
        if kind in ("ENV", "ARG"):
            for pair in shlex.split(arg):
                name, _, value = pair.partition("=")
                if SECRET_NAME.search(name):
                    found.append(f"{kind} {name}: secrets come from the environment at run time, never the image")
        if kind != "RUN":
            continue
        for tokens in _commands(arg):
            if "pip" in " ".join(tokens[:3]) and "install" in tokens:
                pip_installs += 1
                if not copied_constraints:
                    found.append("pip install runs before constraints.txt is copied")
                found += _pip_problems(tokens)
            if tokens[:2] == ["apt-get", "install"]:
                extra = {t for t in tokens[2:] if not t.startswith("-")} - APT_PACKAGES
                found += [f"apt-get installs {p!r}" for p in sorted(extra)]
    if not pip_installs:
        found.append("no pip install of the project")

    user = (args_of.get("USER") or ["root"])[-1].split(":")[0]
    if user in ("root", "0"):
        found.append(f"runs as {user}: the last USER must be a non-root user")

    health = args_of.get("HEALTHCHECK", [])
    if not health or " CMD " not in f" {health[-1]} ":
        found.append("no HEALTHCHECK ... CMD")

    if [_exec_form(a) for a in args_of.get("ENTRYPOINT", [])] != [["fusion"]]:
        found.append("ENTRYPOINT must be [\"fusion\"]")
    if [_exec_form(a) for a in args_of.get("CMD", [])] != [["--help"]]:
        found.append("CMD must be [\"--help\"], so that `docker run IMAGE` runs `fusion --help`")
    return found


def test_the_dockerfile_keeps_the_rules():
    assert problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize("old, new, expected", [
    ('-e ".${', 'requests -e ".${', "pip installs 'requests'"),
    ("pip install -c constraints.txt", "pip install", "without -c constraints.txt"),
    ("RUN pip install", "RUN pip install --upgrade pip && pip install", "pip installs 'pip'"),
    ("USER 1000:1000", "USER root", "runs as root"),
    ("USER 1000:1000", "USER 0", "runs as 0"),
    ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
    ('ENTRYPOINT ["fusion"]', 'ENTRYPOINT ["python", "-m", "flows.cli"]', "ENTRYPOINT"),
    ('CMD ["--help"]', 'CMD ["run", "nightly"]', "CMD must be"),
    ("RAY_USAGE_STATS_ENABLED=0", "RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_TOKEN=abc", "ENV RAY_AUTH_TOKEN"),
    ("ARG FUSION_EXTRAS", "ARG FUSION_STORE__DB=postgresql://u:p@db/f\nARG FUSION_EXTRAS", "ARG FUSION_STORE__DB"),
    ("COPY tasks/ tasks/", "COPY . .", "COPY .: not part"),
    ("--no-install-recommends wget", "--no-install-recommends wget curl", "apt-get installs 'curl'"),
    ("python:3.11-slim-bookworm", "rayproject/ray:2.60.0", "base image"),
])
def test_the_rules_catch_a_bad_dockerfile(old, new, expected):
    text = DOCKERFILE.read_text()
    assert old in text
    found = problems(text.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_the_dockerignore_admits_only_what_the_image_copies():
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    admitted = {ln[1:] for ln in lines if ln.startswith("!")}
    copied = {s for kind, arg in instructions(DOCKERFILE.read_text()) if kind == "COPY"
              for s in shlex.split(arg)[:-1]}
    assert admitted == copied == ALLOWED_COPIES


def test_the_profiles_in_the_image_hold_no_credentials():
    profiles = sorted((ROOT / "fusion_core" / "profiles").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "local", "cluster"}
    for profile in profiles:
        data = yaml.safe_load(profile.read_text()) or {}
        assert "db" not in (data.get("store") or {}), f"{profile.name}: store.db belongs in FUSION_STORE__DB"


def test_the_entrypoint_runs_fusion_help():
    """`docker run IMAGE` runs ENTRYPOINT + CMD; here the same command from the venv's console script."""
    ins = instructions(DOCKERFILE.read_text())
    entrypoint = next(json.loads(a) for k, a in ins if k == "ENTRYPOINT")
    cmd = next(json.loads(a) for k, a in ins if k == "CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts  # pip creates this console script in the image's venv
    executable = Path(sys.executable).parent / entrypoint[0]
    done = subprocess.run([str(executable), *entrypoint[1:], *cmd], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: fusion" in done.stdout
    for command in ("run", "serve", "runs", "models"):
        assert f" {command} " in done.stdout, command
