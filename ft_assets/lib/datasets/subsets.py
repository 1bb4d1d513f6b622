"""Nested, stratified shares of a train split: the points of a learning curve.

Every row gets a rank from a hash of (seed, label, text), the same rank wherever the row sits in the split,
and the share `fraction` keeps, within each label, the ceil(fraction * n) best-ranked rows of that label
(at least one row of every label). So the 1% share is inside the 3% share of the same seed, every label
keeps its proportion, and a row's membership does not depend on the order the split's file lists rows in.
Tasks without labels (instruction, language modelling, preference) are one group: nested, not stratified.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict


def row_rank(seed: int, label, text: str) -> str:
    return hashlib.sha256(f"{seed}\x00{label}\x00{text}".encode()).hexdigest()


def nested_subset(rows: dict[str, list], fraction: float, seed: int, stratify: bool) -> dict[str, list]:
    """The rows of the share, in the split's own order.

    Raises:
        ValueError: a fraction outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a learning-curve fraction must be in (0, 1], got {fraction}")
    groups: dict[object, list[tuple[str, int]]] = defaultdict(list)
    for i, (text, label) in enumerate(zip(rows["text"], rows["label"])):
        groups[label if stratify else None].append((row_rank(seed, label, text), i))
    kept = sorted(i for members in groups.values()
                  for _, i in sorted(members)[:max(1, math.ceil(fraction * len(members) - 1e-9))])
    return {column: [values[i] for i in kept] for column, values in rows.items()}
