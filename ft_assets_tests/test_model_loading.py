"""Loading base models safely: safetensors only unless a recipe allows pickle, and a model repository's own
code runs only when the recipe trusts it; the choice is recorded in the manifest."""

import json
import shutil
from pathlib import Path

import pytest

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.training.base_models import load_classifier
from ft_assets.lib.training.checkpoint import save_checkpoint
from ft_assets.lib.training.loop import fit
from ft_assets_tests.conftest import LABELS, ticket_rows


def head_recipe(model_dir: Path, **loading) -> RecipeConfig:
    return RecipeConfig(name="t_head", dataset="d", base_model=str(model_dir), method="head_only",
                        training={"epochs": 1, "batch_size": 16, "max_length": 16}, **loading)


def rows() -> dict[str, list]:
    pairs = ticket_rows(4)
    return {"text": [t for _, t in pairs], "label": [label for label, _ in pairs]}


@pytest.fixture(scope="module")
def pickled_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT with its weights as pytorch_model.bin (pickle) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    # transformers 5 writes only safetensors, so the pickle file is written the way older tools did.
    out = Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("pickled") / "bert"))
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    assert (out / "pytorch_model.bin").exists() and not list(out.glob("*.safetensors"))
    return out


def test_pickle_weights_are_refused_by_default_with_the_way_out_named(pickled_model_dir):
    with pytest.raises(ValueError) as refused:
        fit(head_recipe(pickled_model_dir), LABELS, rows(), None, device="cpu")
    message = str(refused.value)
    assert str(pickled_model_dir) in message and "pytorch_model.bin" in message and "allow_pickle: true" in message


def test_a_recipe_that_allows_pickle_trains_and_the_manifest_says_so(pickled_model_dir, tmp_path):
    recipe = head_recipe(pickled_model_dir, allow_pickle=True)
    result = fit(recipe, LABELS, rows(), None, device="cpu")
    manifest = save_checkpoint(result, recipe, LABELS, tmp_path / "ckpt", lineage={})
    assert manifest["base_model"]["loading"] == {"allow_pickle": True, "trust_remote_code": False}
    assert manifest["recipe"]["allow_pickle"] is True


CUSTOM_CODE = '''
from pathlib import Path

from transformers import BertConfig, BertForSequenceClassification

# Proof that this file ran: loading remote code executes whatever is here.
Path(__file__).parent.joinpath("{marker}").write_text("ran")


class CustomConfig(BertConfig):
    model_type = "custom_bert"


class CustomBertForSequenceClassification(BertForSequenceClassification):
    config_class = CustomConfig
'''


@pytest.fixture
def remote_code_model_dir(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny BERT declaring its own model class in custom_modeling.py, as hub repositories with
    `auto_map` do; and the file that module writes when it is executed."""
    out = Path(shutil.copytree(tiny_model_dir, tmp_path / "custom_bert"))
    marker = tmp_path / "remote_code_ran"
    (out / "custom_modeling.py").write_text(CUSTOM_CODE.replace("{marker}", str(marker)))
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="custom_bert", auto_map={
        "AutoConfig": "custom_modeling.CustomConfig",
        "AutoModelForSequenceClassification": "custom_modeling.CustomBertForSequenceClassification"})
    (out / "config.json").write_text(json.dumps(config))
    return out, marker


def test_remote_code_does_not_run_unless_the_recipe_trusts_it(remote_code_model_dir):
    model_dir, marker = remote_code_model_dir
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_classifier(str(model_dir), LABELS)
    assert not marker.exists()
    model, _ = load_classifier(str(model_dir), LABELS, trust_remote_code=True)
    assert marker.read_text() == "ran" and type(model).__name__ == "CustomBertForSequenceClassification"


def test_a_4bit_classifier_keeps_its_head_in_full_precision_and_trains_it(tiny_model_dir):
    """qlora on an encoder. The 4-bit weights come from bitsandbytes' CPU backend here (a GPU run loads
    the same modules onto CUDA): the encoder is NF4, the pooler and classifier stay Linear and train
    in full beside the LoRA weights (PEFT cannot give a 4-bit module gradients)."""
    import bitsandbytes as bnb
    import torch

    from ft_assets.lib.training.methods import apply_method

    model, tokenizer = load_classifier(str(tiny_model_dir), LABELS, quantize_4bit=True)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert isinstance(linears["bert.encoder.layer.0.attention.self.query"], bnb.nn.Linear4bit)
    assert not any(isinstance(linears[name], bnb.nn.Linear4bit) for name in ("bert.pooler.dense", "classifier"))

    model = apply_method(model, "qlora", {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]})
    # In training mode, as the loop trains it. In eval mode, on a CPU with AVX512-BF16, bitsandbytes
    # 0.50 repacks 4-bit weights for its CPU kernel and fails on layers narrower than its 64-value
    # block (`shape '[32, 0]' is invalid`): this tiny BERT's 32, never a real model's.
    model.train()
    texts, targets = rows()["text"][:6], torch.tensor([0, 1, 2, 0, 1, 2])
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.nn.functional.cross_entropy(logits.float(), targets).backward()
    with_gradient = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in ("pooler.dense.modules_to_save", "classifier.modules_to_save", "query.lora_B"):
        assert any(part in name for name in with_gradient), part
