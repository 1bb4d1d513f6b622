"""Catastrophic forgetting, measured: the base and the tuned model on the same texts, which the base knows.

Where the texts come from (ForgettingTexts): a general corpus, for a pretrained base that learned
such text; or the held-out test split of the dataset a checkpoint:<recipe> base trained on, for a
base that knows nothing else (a model from scratch scores everyday text as noise, so a loss
change there measures nothing it had).
Causal LMs: the mean per-token loss on the texts, before and after tuning; forgetting is the
increase (0 = nothing lost, negative = the tuned model models them better).
Encoders: how far tuning moved the mean-pooled sentence embeddings of the texts —
representation_drift = 1 - mean cosine(base_i, tuned_i) (0 = unchanged, up to 2 for opposite
directions) — and how much of the embedding space's structure survived — knn_overlap = the mean
share of each sentence's k nearest neighbours (cosine) that are the same before and after
(1 = the same neighbourhoods, about k/n for unrelated ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KNN = 10


@dataclass(frozen=True)
class ForgettingTexts:
    """The texts forgetting is measured on, where they come from, and how a causal LM scores them.

    Either `corpus` (a general text corpus) or `dataset` and `split` (the base recipe's dataset) is set.
    `task` is the task of those rows: language_modeling (one stream in blocks, as an LM test split
    is scored; a general corpus is read this way), instruction (conversations, loss on the answers)
    or classification (plain texts, for encoders).
    """

    texts: list[str]
    task: str = "language_modeling"
    corpus: str | None = None
    dataset: str | None = None
    split: str | None = None

    def source(self) -> dict:
        """Where the texts come from, as the report's forgetting block records it."""
        return {"corpus": self.corpus, "dataset": self.dataset, "split": self.split}


def forgetting_source(block: dict) -> str:
    """What a report's forgetting block was measured on, in words: `general text (corpus `general`)` or
    `the base's held-out text (datasets/towns, test split)`."""
    if block.get("corpus") is not None:
        return f"general text (corpus `{block['corpus']}`)"
    return f"the base's held-out text (datasets/{block['dataset']}, {block['split']} split)"


def mean_pooled_embeddings(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                           device: str) -> np.ndarray:
    """(n, hidden) mean of the last hidden states over each text's real tokens (the MiniLM way)."""
    import torch

    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            hidden = hidden[:, -batch["input_ids"].shape[1]:]  # prompt tuning puts virtual tokens in front
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def representation_drift(base: np.ndarray, tuned: np.ndarray) -> float:
    """1 - mean cosine similarity between each text's base and tuned embedding."""
    return float(1.0 - np.mean(np.sum(_unit(base) * _unit(tuned), axis=1)))


def knn_overlap(base: np.ndarray, tuned: np.ndarray, k: int = KNN) -> float:
    """Mean share of each text's k nearest neighbours (cosine, itself excluded) kept after tuning."""
    n = len(base)
    if n < 2:
        raise ValueError(f"knn_overlap needs at least 2 texts, got {n}")
    k = min(k, n - 1)

    def neighbours(x: np.ndarray) -> np.ndarray:
        similarity = _unit(x) @ _unit(x).T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    before, after = neighbours(base), neighbours(tuned)
    return float(np.mean([len(set(b) & set(a)) / k for b, a in zip(before, after)]))


def encoder_forgetting(base_model, tuned_model, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                       device: str) -> dict:
    base = mean_pooled_embeddings(base_model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                  device=device)
    tuned = mean_pooled_embeddings(tuned_model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                   device=device)
    return {"kind": "encoder", "n_texts": len(texts), "representation_drift": representation_drift(base, tuned),
            "knn_overlap": knn_overlap(base, tuned), "knn_k": min(KNN, len(texts) - 1)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
