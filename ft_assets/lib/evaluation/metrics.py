"""Task metrics and baselines: accuracy, macro-F1, per-class and confusion for classification; exact match and
ROUGE-L of greedy answers for instruction tasks; the majority-class baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    macro_f1: float
    n: int
    per_class: list[dict]  # label, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true label, columns: predicted label, in `labels` order

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n,
                "per_class": self.per_class, "confusion_matrix": self.confusion}


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> ClassificationMetrics:
    """Accuracy, macro-F1 over `labels`, a per-class table and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]
    return ClassificationMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(np.mean(f1)) if len(labels) else 0.0,
        n=len(y_true),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def majority_baseline(train_labels: list[str], test_labels: list[str], labels: list[str]) -> ClassificationMetrics:
    """Always predict the most frequent training label (ties: the first in `labels`)."""
    counts = {label: train_labels.count(label) for label in labels}
    majority = max(labels, key=lambda label: counts[label])
    return classification_metrics(test_labels, [majority] * len(test_labels), labels)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: the SQuAD convention for exact match."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
    """exact_match (after normalize_answer) and ROUGE-L F1 (rouge-score, stemmed), averaged."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    n = len(references)
    exact = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references))
    return {"exact_match": exact / n if n else 0.0, "rouge_l": rouge / n if n else 0.0, "n_generated": n}


def generate_answers(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, batch_size: int,
                     device: str) -> list[str]:
    """Greedy answers to chat prompts (messages before the answer), rendered with the chat template."""
    import torch

    from ft_assets.lib.training.causal_data import render

    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    answers = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    tokenizer.padding_side = "right"
    return answers


