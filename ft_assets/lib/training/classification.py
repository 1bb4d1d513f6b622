"""The classification task: a sequence classifier over the labels, its batches, loss and validation."""

from __future__ import annotations

import numpy as np

from ft_assets.lib.training.base_models import load_classifier, resolve_base_model
from ft_assets.lib.training.methods import apply_method, head_modules
from ft_assets.lib.training.task import TrainingData, batch_sampler


def setup(recipe, labels, train_rows, validation_rows, base_model_path, device, world) -> TrainingData:
    """A sequence classifier over `labels` on the base (the recipe's method applied), its tokenized rows in
    length-grouped or weighted batches, the cross-entropy loss, and validation accuracy."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    cfg = recipe.training
    label_ids = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(train_rows["label"]) - set(label_ids))
    if unknown:
        raise ValueError(f"recipe {recipe.name!r}: training rows have labels {unknown} outside the label set {labels}")
    base_path = base_model_path or resolve_base_model(recipe.base_model)
    model, tokenizer = load_classifier(base_path, labels, quantize_4bit=recipe.method == "qlora", **recipe.loading)
    model = apply_method(model, recipe.method, recipe.method_args, base_model_path=base_path)
    train_set = Dataset.from_dict({"text": train_rows["text"], "labels": [label_ids[x] for x in train_rows["label"]]})
    train_set = train_set.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=cfg.max_length),
        batched=True, remove_columns=["text"],
    )
    class_weight, example_weights = _imbalance_handling(cfg.imbalance, train_set["labels"], len(labels))
    if class_weight is not None:
        class_weight = class_weight.to(device)
    batches = batch_sampler(cfg, [len(ids) for ids in train_set["input_ids"]], world, weights=example_weights,
                            group_by_length=cfg.group_by_length)
    # Multiples of 8 keep tensor-core shapes on GPUs; the few extra pad tokens carry no loss.
    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if device == "cuda" else None)

    def collate(rows):
        batch = pad(rows)
        batch["n_tokens"] = batch["attention_mask"].sum(dim=1)
        return batch

    def loss(model, batch):
        targets = batch.pop("labels")
        logits = model(**batch).logits  # (B, n_labels)
        return torch.nn.functional.cross_entropy(logits.float(), targets, weight=class_weight)

    validate = None
    if validation_rows and validation_rows["text"]:
        def validate(model):
            return _validation_metrics(model, tokenizer, validation_rows, label_ids, cfg, device)

    return TrainingData(model=model, tokenizer=tokenizer, train_set=train_set, collate=collate, loss=loss,
                        validate=validate, heads=set(head_modules(model)), base_model_path=base_path, batches=batches)


def _imbalance_handling(imbalance: str, label_ids: list[int], n_labels: int):
    """(class weights for the loss, per-example sampling weights); None where the setting uses neither."""
    import numpy as np
    import torch

    counts = np.bincount(label_ids, minlength=n_labels).astype(np.float64)
    if imbalance == "class_weights":
        # sklearn's "balanced": n / (k * n_class); a class absent from train gets weight 0.
        weights = np.divide(len(label_ids), n_labels * counts, out=np.zeros_like(counts), where=counts > 0)
        return torch.tensor(weights, dtype=torch.float32), None
    if imbalance == "balanced_sampler":
        return None, [1.0 / counts[i] for i in label_ids]
    return None, None


def _validation_metrics(model, tokenizer, rows, label_ids, cfg, device) -> dict:
    import torch

    logits = predict_logits(model, tokenizer, rows["text"], max_length=cfg.max_length,
                            batch_size=cfg.batch_size * 2, device=device)
    target = torch.tensor([label_ids.get(x, -100) for x in rows["label"]])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), target, ignore_index=-100).item()
    accuracy = float((logits.argmax(-1) == target.numpy()).mean())
    return {"eval_loss": loss, "eval_accuracy": accuracy}


def predict_logits(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int, device: str) -> np.ndarray:
    """Logits (n_texts, n_labels) in eval mode, batch by batch, in the order of `texts`."""
    import torch

    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            chunks.append(model(**batch).logits.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.num_labels), dtype=np.float32)
