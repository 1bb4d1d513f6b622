"""Loading base models safely: safetensors only unless a recipe allows pickle, and a model repository's own
code runs only when the recipe trusts it; the choice is recorded in the manifest."""

import json
import shutil
from pathlib import Path

import pytest

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.models import load_classifier
from ft_assets.lib.train import fit, save_checkpoint
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
