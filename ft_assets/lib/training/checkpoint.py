"""A tuned checkpoint's folder: what is in it, how it is written (atomically, manifest last) and loaded."""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ft_assets.lib.config import CAUSAL_TASKS, SCRATCH, RecipeConfig
from ft_assets.lib.models.model_card import CARD_FILE, render_model_card
from ft_assets.lib.storage import atomic_directory, file_sha256s
from ft_assets.lib.training.base_models import load_causal_lm, load_classifier, model_sha256, quiet_hf_logging
from ft_assets.lib.training.loop import FitResult
from ft_assets.lib.training.preference import REWARD_LABELS
from ft_assets.lib.training.resume import trainable_state


# Files of a checkpoint directory that are not part of transformers' or PEFT's own layout.
LABELS_FILE = "labels.json"
MANIFEST_FILE = "manifest.json"  # not in its own `files` map: storage.DESCRIPTIVE_FILES
TRAIN_INFO_FILE = "train_info.json"
METRICS_FILE = "metrics.jsonl"

# export: merged writes the adapter folded into the base here, loadable without PEFT.
MERGED_DIR = "merged"
# training.keep_last: the last step's weights, beside the best step's that the checkpoint holds.
LAST_DIR = "last"



def is_causal_lm(manifest_or_train_info: dict) -> bool:
    """Whether a checkpoint holds a causal LM (else a sequence classifier: a classifier or a reward model),
    from its manifest or train_info."""
    info = manifest_or_train_info.get("train_info", manifest_or_train_info)
    task = info.get("task", manifest_or_train_info.get("task", "classification"))
    return task in CAUSAL_TASKS or (task == "preference" and info.get("objective") != "reward")


def save_checkpoint(result: FitResult, recipe: RecipeConfig, labels: list[str], output_dir: Path,
                    lineage: dict) -> dict:
    """Writes the checkpoint atomically and returns its manifest."""
    task, base_path = result.train_info["task"], result.base_model_path
    if result.train_info.get("objective") == "reward":
        labels = REWARD_LABELS  # the one output of a reward model's head
    if recipe.base_model == SCRATCH:
        base = {"id": SCRATCH, "path": None, "sha256": None, "scratch": recipe.scratch.model_dump()}
    else:
        base = {"id": recipe.base_model, "path": base_path, "sha256": model_sha256(base_path),
                "loading": recipe.loading}
    manifest = {
        "task": task,
        "recipe": recipe.model_dump(mode="json"),
        "recipe_hash": recipe.recipe_hash(),
        "base_model": base,
        "labels": labels,
        "libraries": _library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_info": result.train_info,
        **lineage,
    }
    with atomic_directory(output_dir) as staging:
        result.model.save_pretrained(staging, safe_serialization=True)
        result.tokenizer.save_pretrained(staging)
        if result.last_state is not None:
            _save_last(result, staging / LAST_DIR)
        if recipe.export == "merged":
            _export_merged(staging, base_path, labels, result.tokenizer, causal=is_causal_lm(result.train_info),
                           loading=recipe.loading)
        (staging / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n")
        (staging / TRAIN_INFO_FILE).write_text(json.dumps(result.train_info, indent=2) + "\n")
        result.logger.write_jsonl(staging / METRICS_FILE)
        # Last, so every file is in place: `ft-assets verify` re-hashes them against this map.
        manifest["files"] = file_sha256s(staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / CARD_FILE).write_text(render_model_card(manifest))
    return manifest


def copy_checkpoint(source: Path, output_dir: Path, **manifest_fields) -> dict:
    """Publishes a copy of the checkpoint at `source` as `output_dir` (atomically, as save_checkpoint writes
    one), its manifest and model card extended with `manifest_fields`; returns the new manifest."""
    manifest = {**json.loads((source / MANIFEST_FILE).read_text()), **manifest_fields,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "copied_from": str(source)}
    with atomic_directory(output_dir) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / CARD_FILE).write_text(render_model_card(manifest))
    return manifest


def _save_last(result: FitResult, folder: Path) -> None:
    """The last step's weights under `folder`; the model holds the best step's again afterwards."""
    best = trainable_state(result.model, "cpu")
    result.model.load_state_dict(result.last_state, strict=False)
    result.model.save_pretrained(folder, safe_serialization=True)
    result.tokenizer.save_pretrained(folder)
    result.model.load_state_dict(best, strict=False)


def _export_merged(adapter_dir: Path, base_path: str, labels: list[str], tokenizer, *, causal: bool,
                   loading: dict) -> None:
    """Folds the adapter into an unquantized copy of the base (never into 4-bit weights) under merged/."""
    from peft import PeftModel

    base = load_causal_lm(base_path, **loading)[0] if causal else load_classifier(base_path, labels, **loading)[0]
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(adapter_dir / MERGED_DIR, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir / MERGED_DIR)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("ft_assets", "torch", "transformers", "peft", "datasets", "duckdb"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def load_checkpoint(checkpoint_dir: Path):
    """A tuned checkpoint (full model or PEFT adapter), its tokenizer and its labels ([] for causal LMs)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from ft_assets.lib.training.causal_data import ensure_pad_token

    quiet_hf_logging()
    labels = json.loads((checkpoint_dir / LABELS_FILE).read_text())["labels"]
    manifest = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())
    causal = is_causal_lm(manifest)
    loading = {k: manifest["recipe"].get(k, False) for k in ("allow_pickle", "trust_remote_code")}
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=loading["trust_remote_code"])
    if causal:
        ensure_pad_token(tokenizer)
    if (checkpoint_dir / "adapter_config.json").exists():
        from peft import PeftModel

        quantized = manifest["recipe"]["method"] == "qlora"
        base_path = manifest["base_model"]["path"]
        base = (load_causal_lm(base_path, quantize_4bit=quantized, **loading)[0] if causal
                else load_classifier(base_path, labels, quantize_4bit=quantized, **loading)[0])
        model = PeftModel.from_pretrained(base, checkpoint_dir)
    else:
        auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
        # The checkpoint's own weights are safetensors: it was written with safe_serialization.
        model = auto.from_pretrained(checkpoint_dir, use_safetensors=True,
                                     trust_remote_code=loading["trust_remote_code"])
    model.eval()
    return model, tokenizer, labels
