"""Adaptation methods: which parameters of a pretrained classifier a recipe trains.

  full       every parameter
  head_only  the encoder frozen; only the pooler and the classification head train
  lora       PEFT low-rank adapters on the attention projections; the head trains in full

"The head" is the pooler and the classifier: sentence encoders such as all-MiniLM-L6-v2 were
trained with mean pooling, so their [CLS] pooler is untrained for the task and must learn too.
"""

from __future__ import annotations

from typing import Any

# Modules that sit on top of the encoder in transformers' sequence classifiers
# (BERT: pooler + classifier; GPT-2/Llama: score).
HEAD_MODULES = ("pooler", "classifier", "score")


def apply_method(model, method: str, method_args: dict[str, Any]):
    """Returns the model to train, with requires_grad set for the method.

    Args:
        model: a transformers sequence-classification model.
        method: "full", "head_only" or "lora".
        method_args: the recipe's validated method_args.

    Raises:
        ValueError: the method does not apply to this model (e.g. no head module to train).
    """
    if method == "full":
        for p in model.parameters():
            p.requires_grad = True
        return model
    if method == "head_only":
        heads = head_modules(model)
        for name, p in model.named_parameters():
            p.requires_grad = any(part in heads for part in name.split("."))
        return model
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=method_args["r"],
            lora_alpha=method_args["alpha"],
            lora_dropout=method_args["dropout"],
            target_modules=method_args["target_modules"],
            modules_to_save=head_modules(model),
        )
        return get_peft_model(model, config)
    raise ValueError(f"unknown method {method!r}")


def head_modules(model) -> list[str]:
    """The names of HEAD_MODULES that the model has.

    Raises:
        ValueError: the model has none, so there is no head to train.
    """
    parts = {part for name, _ in model.named_modules() for part in name.split(".")}
    found = [m for m in HEAD_MODULES if m in parts]
    if not found:
        raise ValueError(f"{type(model).__name__} has none of the head modules {HEAD_MODULES}")
    return found


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
