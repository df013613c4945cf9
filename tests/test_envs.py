"""envs/synret.yaml (the conda environment for `--sdm conda`) must mirror pyproject.toml's pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    """Whitespace-free, with the project name in PEP 503 form (open_clip_torch == open-clip-torch)."""
    text = re.sub(r"\s+", "", requirement)
    name = re.match(r"^[A-Za-z0-9._-]+", text).group(0)
    return re.sub(r"[-_.]+", "-", name).lower() + text[len(name):]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env() -> dict:
    return yaml.safe_load((ROOT / "envs" / "synret.yaml").read_text())


def _env_pip() -> list[str]:
    blocks = [d["pip"] for d in _env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(blocks) == 1, "envs/synret.yaml needs exactly one pip: block"
    return blocks[0]


def test_pip_dependencies_match_pyproject():
    project = [_normalise(r) for r in _pyproject()["project"]["dependencies"]]
    env = [_normalise(r) for r in _env_pip()]
    assert len(set(env)) == len(env), "duplicate entries in envs/synret.yaml"
    missing = sorted(set(project) - set(env))
    extra = sorted(set(env) - set(project))
    assert not missing and not extra, f"envs/synret.yaml lacks {missing}, has extra {extra}"
    assert env == project  # same order too, so a diff of the two lists stays readable


def test_env_python_satisfies_requires_python():
    conda = [d for d in _env()["dependencies"] if isinstance(d, str)]
    pythons = [d for d in conda if re.match(r"^python\s*[=<>]", d)]
    assert pythons == ["python=3.11"]
    assert "pip" in conda
    assert _pyproject()["project"]["requires-python"] == ">=3.11,<3.12"


def test_normalise():
    assert _normalise("open_clip_torch == 3.3.0") == "open-clip-torch==3.3.0"
    assert _normalise("PyYAML>=6") == "pyyaml>=6"
    assert _normalise("pyarrow>=26,<27") != _normalise("pyarrow>=26,<28")
