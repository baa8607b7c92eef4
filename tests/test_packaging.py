"""pyproject.toml stays in step with the code and requirements.txt (no build: these read files only)."""
from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> dict[str, str]:
    """requirement name (lower case) -> its version specifier."""
    out = {}
    for line in requirements:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
            out[name.lower().replace("_", "-")] = spec.replace(" ", "")
    return out


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "specviz").rglob("__init__.py")}
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    assert found == listed - {"specviz.assets"}, "add the new package to [tool.setuptools] packages"
    assert PROJECT["tool"]["setuptools"]["package-dir"]["specviz.assets"] == "assets"


def test_dependencies_mirror_requirements_txt_except_the_torch_pin():
    wanted = _names((ROOT / "requirements.txt").read_text().splitlines())
    declared = _names(PROJECT["project"]["dependencies"])
    assert set(declared) == set(wanted)
    assert wanted["torch"].startswith("==") and declared["torch"].startswith(">=")  # a floor, never a CUDA pull
    assert {k: v for k, v in declared.items() if k != "torch"} == {k: v for k, v in wanted.items() if k != "torch"}
    dev = _names((ROOT / "requirements-dev.txt").read_text().splitlines())
    assert _names(PROJECT["project"]["optional-dependencies"]["dev"]) == dev


def test_the_console_script_is_the_cli_main():
    module, _, name = PROJECT["project"]["scripts"]["specviz"].partition(":")
    main = getattr(importlib.import_module(module), name)
    assert main(["models"]) == 0


def test_assets_resolve_from_a_checkout_or_the_environment(monkeypatch, tmp_path):
    from specviz import paths

    assert paths.assets_dir() == ROOT / "assets" and (ROOT / "assets" / "prompts.jsonl").exists()
    monkeypatch.setenv("SPECVIZ_ASSETS", str(tmp_path))
    assert paths.assets_dir() == tmp_path
