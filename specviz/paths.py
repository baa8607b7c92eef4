"""Where the shipped files are: assets/ (example traces, prompt sets, the n-gram corpus, trained drafters).

A checkout (and an editable install, `pip install -e .`) reads the repository's top-level assets/. A wheel
(`pip install .`) carries a copy inside the package as specviz/assets (pyproject.toml maps the folder
there), so an installed copy works away from the checkout. $SPECVIZ_ASSETS overrides both. Imports nothing
of specviz: everything that reads a shipped file can import this.
"""
from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
INSTALLED = _HERE / "assets"  # inside a wheel install
CHECKOUT = _HERE.parent / "assets"  # the repository's own folder


def assets_dir() -> Path:
    if os.environ.get("SPECVIZ_ASSETS"):
        return Path(os.environ["SPECVIZ_ASSETS"]).expanduser()
    # the installed copy first: beside an installed package, ../assets is site-packages/assets,
    # a name any other distribution may have used
    return INSTALLED if INSTALLED.is_dir() else CHECKOUT


ASSETS = assets_dir()
DRAFTERS = ASSETS / "drafters"  # trained drafter weights, their cards and loss curves


def cache_root() -> Path:
    """`$SPECVIZ_CACHE`, else `~/.cache/specviz` (read on every call so tests can redirect it): converted
    models, distillation data, measurements of this machine."""
    env = os.environ.get("SPECVIZ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specviz"
