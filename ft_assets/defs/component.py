"""FineTuningProject: the project YAML as a Dagster component, declared in a `defs.yaml` and driven with `dg`.

    # <root_module>/defs/<project>/defs.yaml
    type: ft_assets.FineTuningProject
    attributes:          # the project YAML's schema: storage, automation, gpu, kubernetes, corpora, datasets, recipes
      corpora: [...]
      datasets: [...]
      recipes: [...]

Relative paths (storage.root, corpus paths) resolve from the defs.yaml's folder. A project alone in its
code location keeps the keys of a project YAML (raw/<corpus>, checkpoints/<recipe>, ...); beside other
projects, its asset keys, sensors and resources start with its folder's name, so corpus and recipe
names may repeat between projects.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import yaml
from pydantic import ValidationError

from ft_assets.lib.config import COMPONENT_TYPES, ConfigError, ProjectConfig, checked_project

PROJECT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class FineTuningProject(dg.Component):
    """Corpora, datasets and fine-tuning recipes as one lineage-tracked asset graph (ft_assets).

    The attributes are the project YAML's schema; see docs/configuration.md.
    """

    def __init__(self, config: ProjectConfig):
        self.config = config

    @classmethod
    def get_model_cls(cls) -> type[ProjectConfig]:
        return ProjectConfig

    @classmethod
    def load(cls, attributes: ProjectConfig | None, context: dg.ComponentLoadContext) -> FineTuningProject:
        folder = context.path if context.path.is_dir() else context.path.parent
        source = folder / "defs.yaml"
        if attributes is None:
            raise ConfigError(f"{source}: a FineTuningProject needs `attributes:` with corpora and datasets")
        folders = project_folders(context.defs_module_path)
        shared = len(folders) > 1
        if shared and not PROJECT_NAME.match(folder.name):
            raise ConfigError(f"{source}: the folder name {folder.name!r} starts this project's asset keys beside "
                              "the other projects: use lowercase letters, digits and _ (starting with a letter)")
        config = checked_project(attributes, source, folder.name if shared else None)
        if shared:
            _require_own_storage(config, [f for f in folders if f != folder])
        return cls(config)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from ft_assets.defs import build_definitions

        return build_definitions(self.config)


def _require_own_storage(config: ProjectConfig, others: list[Path]) -> None:
    """Two projects writing one storage root would share a warehouse whose tables (raw.<corpus>, ...) are
    named without the project: each would overwrite the other's data.

    Raises:
        ConfigError: naming both defs.yaml files and the shared folder.
    """
    mine = _storage_places(config)
    for folder in others:
        try:
            attributes = _project_document(folder / "defs.yaml").get("attributes")
            other = checked_project(ProjectConfig.model_validate(attributes), folder / "defs.yaml")
        except (ValidationError, ConfigError):
            continue  # its own load reports what is wrong with it
        shared = mine & _storage_places(other)
        if shared:
            raise ConfigError(f"{config.source}: its storage ({', '.join(sorted(shared))}) is also that of "
                              f"{other.source}; projects in one code location need storage roots of their own "
                              "(storage.root, and storage.local with an s3:// root; FT_ASSETS_ROOT would give "
                              "them all one)")


def _storage_places(config: ProjectConfig) -> set[str]:
    return {str(config.root)} | ({config.remote_root} if config.remote_root else set())


def _project_document(path: Path) -> dict | None:
    """The FineTuningProject document of a defs.yaml; None when it declares none or is not YAML (dg reports
    that, naming the file and line)."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError:
        return None
    return next((d for d in documents if isinstance(d, dict) and d.get("type") in COMPONENT_TYPES), None)


def project_folders(defs_root: Path) -> list[Path]:
    """The folders under `defs_root` whose defs.yaml declares a FineTuningProject."""
    paths = sorted(defs_root.rglob("defs.yaml")) if defs_root.is_dir() else []
    return [path.parent for path in paths if _project_document(path) is not None]
