"""The Snakemake profiles: what each one hands Snakemake, read with Snakemake's own profile parser."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from snakemake.profiles import ProfileConfigFileParser

REPO = Path(__file__).resolve().parents[1]


def parse(profile: str) -> dict:
    """The CLI arguments a profile gives, as Snakemake reads them (YTE templates evaluated)."""
    with open(REPO / "profiles" / profile / "config.yaml") as stream:
        return dict(ProfileConfigFileParser().parse(stream))


def rules_declaring_gpus() -> set[str]:
    found = set()
    for smk in (REPO / "rules").glob("*.smk"):
        rule = r"^\s*(?:rule (\w+):|use rule \w+ as (\w+) with:)\n"  # a rule, or one derived with `use rule`
        next_rule = r"^\s*(?:rule \w+:|use rule )"
        for name, derived, body in re.findall(rf"{rule}(.*?)(?={next_rule}|\Z)", smk.read_text(), re.M | re.S):
            name = name or derived
            if re.search(r"^\s+resources:\n(?:\s+\w+=.*\n)*?\s+gpu=", body, re.M):
                found.add(name)
    return found


def test_default_profile_stays_local():
    default = parse("default")
    assert "executor" not in default and not any(key.startswith("slurm") for key in default)
    assert "executor" not in parse("local")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any("slurm" in dep for dep in deps), "the SLURM plugin belongs in the [slurm] extra only"


def test_local_profile_caps_gpu_jobs():
    local = parse("local")
    assert any(r.startswith("gpu=") for r in local["resources"])
    assert local["rerun-incomplete"] == "True"


def test_slurm_profile_gpu_rules_are_the_rules_that_declare_gpus():
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    listed = ast.literal_eval(re.search(r"gpu_rules = (\[.*?\])", text).group(1))
    assert set(listed) == rules_declaring_gpus() == {
        "synthesize_shard", "img2img_shard", "generator_prompts_llm", "curate", "data_quality", "finetune", "zeroshot"}


def test_slurm_profile_without_site_settings_leaves_them_to_the_cluster(monkeypatch):
    for var in ("SYNRET_SLURM_ACCOUNT", "SYNRET_SLURM_PARTITION", "SYNRET_SLURM_GPU_PARTITION", "SYNRET_SLURM_GRES"):
        monkeypatch.delenv(var, raising=False)
    slurm = parse("slurm")
    assert slurm["executor"] == "slurm"
    assert slurm["keep-going"] == slurm["rerun-incomplete"] == "True" and int(slurm["retries"]) >= 1
    assert not any(r.startswith(("slurm_account", "slurm_partition")) for r in slurm["default-resources"])
    assert "set-resources" not in slurm


def test_slurm_profile_site_settings(monkeypatch):
    monkeypatch.setenv("SYNRET_SLURM_ACCOUNT", "lab")
    monkeypatch.setenv("SYNRET_SLURM_PARTITION", "cpu")
    monkeypatch.delenv("SYNRET_SLURM_GPU_PARTITION", raising=False)
    monkeypatch.delenv("SYNRET_SLURM_GRES", raising=False)
    slurm = parse("slurm")
    assert {"slurm_account=lab", "slurm_partition=cpu"} <= set(slurm["default-resources"])
    # GPU jobs fall back to the CPU partition, and keep the rules' gpu=1 (sent as --gpus=1)
    assert "finetune:slurm_partition=cpu" in slurm["set-resources"]
    assert not any(":gres=" in r or ":gpu=" in r for r in slurm["set-resources"])

    monkeypatch.setenv("SYNRET_SLURM_GPU_PARTITION", "gpu")
    monkeypatch.setenv("SYNRET_SLURM_GRES", "gpu:a100:1")
    slurm = parse("slurm")
    for rule in rules_declaring_gpus():
        # --gres instead of --gpus: the plugin would send both if gpu stayed at 1
        assert {f"{rule}:slurm_partition=gpu", f"{rule}:gres=gpu:a100:1", f"{rule}:gpu=0"} <= set(slurm["set-resources"])
    assert not any(r.startswith("knn_query:") for r in slurm["set-resources"])


@pytest.mark.parametrize("profile", ["default", "local", "slurm"])
def test_every_profile_setting_is_explained(profile):
    """Each setting carries a comment saying why, on its line or in the comment block above it."""
    lines = (REPO / "profiles" / profile / "config.yaml").read_text().splitlines()
    obvious = {"printshellcmds", "executor", "__use_yte__", "__definitions__"}
    for i, line in enumerate(lines):
        key = re.match(r"^\s*([\w?-]+):", line)
        if not key or key.group(1) in obvious or key.group(1).startswith("?"):
            continue
        above = lines[i - 1].strip() if i else ""
        assert "#" in line or above.startswith("#") or line.rstrip().endswith(":"), f"{profile}: {line!r}"
    assert yaml.safe_load("\n".join(lines)) is not None
