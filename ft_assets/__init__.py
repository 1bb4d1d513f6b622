"""ft_assets: model fine-tuning as declarative, lineage-tracked Dagster assets."""

# `type: ft_assets.FineTuningProject` in a defs.yaml, and what `dg list components` finds (the registry
# module of pyproject's dagster_dg_cli entry point). Lazy, so that the training process, which runs
# ft_assets.lib without Dagster, does not import it.
_COMPONENTS = ("FineTuningProject",)


def __getattr__(name: str):
    if name in _COMPONENTS:
        from ft_assets.defs import component

        return getattr(component, name)
    raise AttributeError(f"module 'ft_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_COMPONENTS])
