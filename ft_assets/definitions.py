"""The code location: the asset graph of the project YAML (FT_ASSETS_CONFIG, else the packaged default)."""

from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config

defs = build_definitions(load_config())
