"""Adaptation methods: which parameters of a pretrained classifier a recipe trains, and how.

  full           every parameter
  head_only      the encoder frozen; only the head trains
  freeze         the top `layers` transformer blocks and the head train; the rest is frozen
  lora           PEFT LoRA adapters (rank r) on `target_modules`; the head trains in full
  rslora         LoRA with rank-stabilised scaling alpha/sqrt(r) instead of alpha/r
  dora           LoRA with weight decomposition (magnitude and direction trained apart)
  qlora          LoRA over a 4-bit NF4 base (bitsandbytes, CUDA only)
  ia3            PEFT IA3: learned scaling vectors on keys, values and feed-forward outputs
  prompt_tuning  PEFT soft prompt of `num_virtual_tokens` embeddings before the input
  prefix_tuning  PEFT prefixes in every layer's keys and values (causal LMs only)

For a classifier, "the head" is the pooler and the classifier: sentence encoders such as
all-MiniLM-L6-v2 were trained with mean pooling, so their [CLS] pooler is untrained for the task
and must learn too. Every PEFT method therefore trains and saves the head modules in full
(`modules_to_save`). A causal LM's output layer is pretrained (and usually tied to the input
embeddings), so it has no head to add: freeze trains the top blocks and the final norm, and
adapters train only their own weights.
"""

from __future__ import annotations

from typing import Any

# Modules that sit on top of the encoder in transformers' sequence classifiers
# (BERT: pooler + classifier; GPT-2/Llama: score).
HEAD_MODULES = ("pooler", "classifier", "score")
# Where transformers keeps the stack of transformer blocks (BERT, GPT-2, Llama/Mistral, T5).
BLOCK_LISTS = ("layer", "h", "layers", "block")
# The norm after the last block of a causal LM (Llama/Mistral: norm, GPT-2: ln_f).
FINAL_NORMS = ("norm", "ln_f")
PEFT_METHODS = ("lora", "rslora", "dora", "qlora", "ia3", "prompt_tuning", "prefix_tuning")


def apply_method(model, method: str, method_args: dict[str, Any], *, causal: bool = False,
                 base_model_path: str | None = None):
    """Returns the model to train, with requires_grad set for the method.

    Args:
        model: a transformers sequence classifier, or a causal LM when `causal` (4-bit for qlora).
        method: one of the methods above.
        method_args: the recipe's validated method_args.
        base_model_path: the tokenizer to read prompt_tuning's init_text with.

    Raises:
        ValueError: the method does not apply to this model (no head, too few blocks, ...).
    """
    if method == "full":
        for p in model.parameters():
            p.requires_grad = True
        return model
    if method == "head_only":
        if causal:
            raise ValueError("head_only trains a classification head; a causal LM has none")
        _train_only(model, prefixes=_head_prefixes(model))
        return model
    if method == "freeze":
        blocks_name, blocks = transformer_blocks(model)
        n = method_args["layers"]
        if n > len(blocks):
            raise ValueError(f"freeze: layers={n} but {type(model).__name__} has only {len(blocks)} blocks")
        top = [f"{blocks_name}.{i}." for i in range(len(blocks) - n, len(blocks))]
        _train_only(model, prefixes=(_final_norm_prefixes(model) if causal else _head_prefixes(model)) + top)
        return model
    if method in PEFT_METHODS:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, peft_config(model, method, method_args, base_model_path, causal=causal))
    raise ValueError(f"unknown method {method!r}")


def peft_config(model, method: str, args: dict[str, Any], base_model_path: str | None, *, causal: bool = False):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType

    task_type = TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS
    heads = None if causal else head_linears(model)
    if method in ("lora", "rslora", "dora", "qlora"):
        return LoraConfig(
            task_type=task_type, r=args["r"], lora_alpha=args["alpha"], lora_dropout=args["dropout"],
            target_modules=args["target_modules"], modules_to_save=heads,
            use_rslora=method == "rslora", use_dora=method == "dora",
        )
    if method == "ia3":
        return IA3Config(task_type=task_type, target_modules=args["target_modules"],
                         feedforward_modules=args["feedforward_modules"], modules_to_save=heads)
    if method == "prompt_tuning":
        from_text = args["init_text"] is not None
        return PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=args["num_virtual_tokens"], modules_to_save=heads,
            prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=args["init_text"], tokenizer_name_or_path=base_model_path if from_text else None,
        )
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=args["num_virtual_tokens"],
                              prefix_projection=args["prefix_projection"], modules_to_save=heads)


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


def transformer_blocks(model):
    """(qualified name, ModuleList) of the model's stack of transformer blocks.

    Raises:
        ValueError: no such stack was found.
    """
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in BLOCK_LISTS and len(module):
            return name, module
    raise ValueError(f"{type(model).__name__}: no list of transformer blocks named one of {BLOCK_LISTS}")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def head_linears(model) -> list[str]:
    """The head's Linear layers as PEFT `modules_to_save` names ("pooler.dense", "classifier").

    Naming the Linear layers rather than the pooler module itself matters: PEFT's IA3 cannot merge
    a saved module that has no weight of its own. qlora loads these unquantized (they train in full),
    and transformers matches the names as suffixes of the full module names.
    """
    import torch

    heads = set(head_modules(model))
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        hit = next((i for i, part in enumerate(parts) if part in heads), None)
        if hit is not None and isinstance(module, torch.nn.Linear):
            names.append(".".join(parts[hit:]))
    return sorted(set(names))


def _head_prefixes(model) -> list[str]:
    heads = set(head_modules(model))
    return [f"{name}." for name, _ in model.named_modules() if name and name.split(".")[-1] in heads]


def _final_norm_prefixes(model) -> list[str]:
    return [f"{name}." for name, _ in model.named_modules() if name and name.split(".")[-1] in FINAL_NORMS]


def _train_only(model, prefixes: list[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = any(name.startswith(prefix) for prefix in prefixes)
