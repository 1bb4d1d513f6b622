"""The code location: the project YAML named by FT_ASSETS_CONFIG; else every FineTuningProject declared in a
defs.yaml under ft_assets/defs/ (see defs/component.py); else the packaged default project."""

import os
from pathlib import Path

import dagster as dg

from ft_assets.defs import build_definitions
from ft_assets.defs.component import project_folders
from ft_assets.lib.config import load_config

PACKAGE_DIR = Path(__file__).resolve().parent


def load_definitions() -> dg.Definitions:
    if os.environ.get("FT_ASSETS_CONFIG") or not project_folders(PACKAGE_DIR / "defs"):
        return build_definitions(load_config())
    return dg.load_from_defs_folder(path_within_project=PACKAGE_DIR)


defs = load_definitions()
