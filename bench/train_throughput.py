"""Training throughput: our engine (ft_assets.lib.training.loop.fit) against Hugging Face Trainer (+ PEFT).

Both run in one process on the same device, one after the other, on the same model and the same
data. For each mode it prints one JSON line: steady-state tokens/s (non-padding tokens only, warmup
steps excluded), examples/s, MFU (causal LMs on CUDA: the anchor's FLOP formula against 989 TFLOP/s)
and peak memory (CUDA only), then a markdown table with the ratios ours/Trainer.

    python bench/train_throughput.py                              # a GPU: every case
    python bench/train_throughput.py --cases fixed --methods lora # one case, one method
    python bench/train_throughput.py --tiny                       # CPU, a minute or two: checks the script
    python bench/train_throughput.py --cases classification       # CPU: the CPU target (real MiniLM)
    python bench/train_throughput.py --cases classification --steps 30 --warmup-steps 3   # bounded

Cases (the setup of ../shared/bench/hf_trainer_anchor.py, extended to real text and padding):
  fixed           TinyLlama-1.1B architecture, random weights, seq 2048, batch 8, full and LoRA
                  (r=16, alpha=32, dropout 0, every linear layer). Ours: task language_modeling (one
                  text stream cut into blocks of 2048 tokens); Trainer: exactly the same blocks.
                  Text: tiny_shakespeare's first 90% (its README's training share), repeated as
                  needed (throughput does not depend on the text).
  instruction     The same model and tokenizer on dolly_open_qa's train split as chat conversations,
                  max_length 2048. Ours: training.packing true; Trainer: its default padded batches of 8
                  (DataCollatorForSeq2Seq), the same tokens and labels. On CUDA ours runs a second time
                  with training.attention flex_attention (engine ours_flex). Both train the same number of
                  epochs over the same conversations, so step counts differ; tokens/s is what compares.
  classification  The packaged MiniLM on banking77 train.csv (77 labels), full fine-tuning, batch 32,
                  max_length 128. Ours: its defaults (dynamic padding, length-grouped batches);
                  Trainer: run_glue.py's default (padding="max_length" to 128, default collator).
                  One epoch over the same seeded random subset.
The model is saved with save_pretrained (random weights and a byte-level BPE tokenizer trained on
the corpus here, as build_scratch_model does) into a temporary folder that both engines load from.
Nothing is downloaded.

Timing: ours logs every step through a MetricLogger whose sink stamps time.perf_counter() (the
loss is synced then); Trainer gets a callback that synchronizes CUDA and stamps at each step end.
The rate is (tokens after the warmup steps) / (time after the warmup steps). run_* figures cover
every step, warmup included: ours' length-grouped order puts the longest batches first, so its
steady-state window holds slightly shorter batches than the epoch's average; compare both.
CUDA: bf16 for both (Trainer bf16=True, adamw_torch_fused; ours precision auto), ours compiled
(its default there). CPU: fp32, ours not compiled (its default there). --compile overrides ours.

Targets: fixed LoRA >= 2.0x Trainer tokens/s and full >= 1.5x; instruction >= 4x non-padding
tokens/s; MFU >= 0.55 for fixed full; CPU MiniLM classification >= 1.5x Trainer examples/s.

CPU figures move with anything else on the cores (each row carries the 1-minute load average):
run a pair twice, once with --trainer-first, and compare. On a GPU machine that lacks this
project's dependencies, put them on PYTHONPATH (ft_assets needs pydantic, duckdb, pyyaml, datasets)
and pass --data to a copy of the shared datasets.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/train_throughput.py` from a checkout, installed or not
# The shared datasets beside the checkout; --data points elsewhere (e.g. a copy carried to a GPU machine).
DATA = (REPO / ".." / "shared" / "data").resolve()

# The anchor's shapes: TinyLlama-1.1B, and its toy config for --tiny.
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4)
TOY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2)
# Every linear layer of a Llama block: what PEFT's "all-linear" resolves to (lm_head excluded). Our
# recipes take a list (LoraArgs.target_modules), so both engines get this list.
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules=LLAMA_LINEARS)
PEAK_FLOPS = 989e12  # dense bf16 spec of H100/H200 SXM, as in the anchor
TARGETS = {("fixed", "full"): 1.5, ("fixed", "lora"): 2.0, ("instruction", "full"): 4.0,
           ("instruction", "lora"): 4.0, ("classification", "full"): 1.5}
MFU_TARGET = 0.55  # fixed, full


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help="comma list of fixed,instruction,classification "
                   "(default: all on CUDA and with --tiny; classification alone on a CPU)")
    p.add_argument("--methods", default="full,lora", help="causal-LM methods (fixed, instruction)")
    p.add_argument("--tiny", action="store_true", help="the anchor's toy LlamaConfig, seq 64, batch 2, CPU")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20; --tiny 4)")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps not measured (default 5; --tiny 1)")
    p.add_argument("--examples", type=int, default=None,
                   help="instruction: conversations (default all); classification: rows (default (warmup+steps) x 32)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="ours' training.compile; auto is its default (on on CUDA, off on CPU)")
    p.add_argument("--trainer-first", action="store_true", help="run Trainer before ours in each pair")
    p.add_argument("--seed", type=int, default=0, help="the classification subset and both engines' seeds")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (banking77/, dolly_open_qa/, ...)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSONL to append to (default bench/results/train_throughput-<device>-<date>.jsonl)")
    return p.parse_args(argv)


# --- data -----------------------------------------------------------------------------------------

def shakespeare_train() -> str:
    """tiny_shakespeare's first 90% of characters (nanoGPT's split; its README's convention)."""
    text = (DATA / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
    return text[: int(len(text) * 0.9)]


def dolly_conversations(limit: int | None) -> list[str]:
    """dolly_open_qa train rows as the chat-messages JSON of ingest's instruction records
    (lib/ingest/readers.py _conversation: instruction + optional context as the user turn, then the response)."""
    convs = []
    for line in (DATA / "dolly_open_qa" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        prompt = row["instruction"] + (f"\n\n{row['context']}" if row["context"].strip() else "")
        convs.append(json.dumps([{"role": "user", "content": prompt},
                                 {"role": "assistant", "content": row["response"]}], ensure_ascii=False))
    return convs[:limit]


def banking77_rows(n: int | None, seed: int) -> tuple[dict[str, list], list[str]]:
    """A seeded random subset of banking77 train.csv ({"text", "label"}) and the 77 labels in order."""
    import csv

    with open(DATA / "banking77" / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    labels = json.loads((DATA / "banking77" / "categories.json").read_text())
    return {"text": [r["text"] for r in rows], "label": [r["category"] for r in rows]}, labels


def text_for_blocks(tokenizer, text: str, n_blocks: int, block: int) -> str:
    """A prefix of `text` (repeated as needed) that lib/causal_data.text_blocks cuts into exactly
    n_blocks blocks of `block` tokens: tokens = len(ids) + 1 (eos) must lie in [n*block, (n+1)*block)."""
    need = n_blocks * block
    per_copy = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n".join([text] * math.ceil((need + 64) / per_copy))
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # Cut a few tokens past the need, so a word split at the cut cannot drop below it.
    prefix = text[: offsets[need + 8][0]]
    got = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) + 1
    if not need <= got < need + block:
        raise ValueError(f"could not cut the text into {n_blocks} blocks of {block} (got {got} tokens)")
    return prefix


# --- model ----------------------------------------------------------------------------------------

def save_random_llama(arch: dict, seq: int, corpus: list[str], out: Path, device: str) -> int:
    """Random Llama weights and a byte-level BPE tokenizer (with a chat template) saved in `out`.

    Returns the non-embedding parameter count (the anchor's n for MFU).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from ft_assets.lib.config import ScratchModelConfig
    from ft_assets.lib.training.base_models import build_scratch_model

    # The project's own scratch tokenizer; the throwaway model it builds beside it is a few MB.
    _, tokenizer = build_scratch_model(ScratchModelConfig(vocab_size=arch["vocab_size"], hidden_size=8, layers=1,
                                                          heads=1, context=seq), corpus)
    torch.manual_seed(0)
    config = LlamaConfig(**arch, max_position_embeddings=max(seq, 2048), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):  # initialising 1.1B weights on a GPU takes seconds, not a minute
        model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    del model
    free_memory()
    return n


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def flops_per_token(n: int, arch: dict, seq: float, lora: bool) -> float:
    """The anchor's formula: 6N (4N for LoRA: no weight gradients) + attention scores at length seq."""
    attn = 12 * arch["num_hidden_layers"] * arch["hidden_size"] * seq  # fwd+bwd (PaLM appendix)
    return (4 * n + attn * 2 / 3) if lora else (6 * n + attn)


# --- the two engines ------------------------------------------------------------------------------

def run_ours(recipe: dict, task: str, labels: list[str], rows: dict, device: str, warm: int) -> dict:
    """fit() as users get it; rates from the per-step records after `warm` steps."""
    from ft_assets.lib.config import RecipeConfig
    from ft_assets.lib.training.loop import MetricLogger, fit

    stamps = []
    logger = MetricLogger(sink=lambda record: stamps.append(time.perf_counter()))
    result = fit(RecipeConfig.model_validate(recipe), labels, rows, None, task=task, device=device, logger=logger)
    steps = [r for r in logger.records if "tokens_seen" in r]
    if len(steps) != len(stamps) or len(steps) <= warm:
        raise RuntimeError(f"expected one record per step after {warm} warmup steps, got {len(steps)}")
    # examples_per_sec and tokens_per_sec share one elapsed time: their ratio recovers examples seen.
    tokens = [r["tokens_seen"] for r in steps]
    examples = [round(r["examples_per_sec"] * r["tokens_seen"] / r["tokens_per_sec"]) for r in steps]
    info = result.train_info
    out = window(stamps, tokens, examples, warm)
    out.update(compile=info["compiled"], precision=info["precision"], attention=info["attention"],
               run_tokens_per_s=info["tokens_per_sec"], run_examples_per_s=info["examples_per_sec"],
               padding_fraction=None)
    del result
    return out


def run_trainer(model, dataset, collate, batch: int, epochs: int, device: str, warm: int,
                group_by_length: bool = False) -> dict:
    """transformers.Trainer with its defaults, bf16 + fused AdamW on CUDA as the anchor."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    seen = []  # (examples, non-padding tokens, padded positions) per collated batch, in order

    def counting_collate(features):
        b = collate(features)
        mask = b.get("attention_mask")
        seen.append((len(features), int(mask.sum()) if mask is not None else b["input_ids"].numel(),
                     b["input_ids"].numel()))
        return b

    stamps = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    out_dir = tempfile.mkdtemp(prefix="bench_trainer_")
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=batch, num_train_epochs=epochs,
                             bf16=device == "cuda", use_cpu=device == "cpu", optim="adamw_torch_fused",
                             learning_rate=1e-4, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, seed=0,
                             train_sampling_strategy="group_by_length" if group_by_length else "random")
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=counting_collate,
                      callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its closing dict would break the one-JSON-line-per-mode output
    trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)
    steps = len(stamps) - 1
    # Batch i feeds step i (no accumulation); the loader may have collated one batch ahead.
    examples = list(itertools.accumulate(s[0] for s in seen[:steps]))
    tokens = list(itertools.accumulate(s[1] for s in seen[:steps]))
    out = window(stamps[1:], tokens, examples, warm)
    run_s = stamps[-1] - stamps[0]
    out.update(compile=False, precision="bf16" if device == "cuda" else "fp32",
               attention=getattr(getattr(model, "config", None), "_attn_implementation", None),
               run_tokens_per_s=tokens[-1] / run_s, run_examples_per_s=examples[-1] / run_s,
               padding_fraction=round(1 - sum(s[1] for s in seen[:steps]) / sum(s[2] for s in seen[:steps]), 3))
    del trainer
    return out


def window(stamps: list[float], tokens: list[int], examples: list[int], warm: int) -> dict:
    """Steady-state rates from cumulative counts and the time stamped after each step (warm >= 1)."""
    if len(stamps) <= warm:
        raise RuntimeError(f"{len(stamps)} steps ran, not more than the {warm} warmup steps")
    seconds = stamps[-1] - stamps[warm - 1]
    step_s = [b - a for a, b in zip(stamps[warm - 1:], stamps[warm:])]
    measured_tokens = tokens[-1] - tokens[warm - 1]
    return {"steps": len(stamps), "measured_steps": len(stamps) - warm, "measured_tokens": measured_tokens,
            "tokens_per_s": measured_tokens / seconds, "examples_per_s": (examples[-1] - examples[warm - 1]) / seconds,
            "step_s_median": statistics.median(step_s), "step_s_max": max(step_s)}


# --- cases ----------------------------------------------------------------------------------------

def causal_recipe(name: str, model_dir: Path, method: str, S: dict, **training) -> dict:
    return {"name": name, "dataset": "bench", "base_model": str(model_dir), "method": method,
            "method_args": LORA if method == "lora" else {},
            "training": {"batch_size": S["batch"], "max_length": S["seq"], "log_every_steps": 1,
                         "save_every_steps": 0, "compile": S["compile"], **training}}


def load_for_trainer(model_dir: Path, method: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    return model


def case_fixed(S: dict, model_dir: Path, n: int):
    """Full blocks of max_length tokens, no padding: the anchor's setup on real text."""
    from transformers import AutoTokenizer, default_data_collator

    from ft_assets.lib.training.causal import causal_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_blocks = (S["warm"] + S["steps"]) * S["batch"]
    text = text_for_blocks(tokenizer, shakespeare_train(), n_blocks, S["seq"])
    blocks, _ = causal_examples(tokenizer, "language_modeling", [text], S["seq"], packing=False)
    if len(blocks) != n_blocks:
        raise ValueError(f"expected {n_blocks} blocks, causal_examples gave {len(blocks)}")
    modes = []
    for method in S["methods"]:
        flops = flops_per_token(n, S["arch"], S["seq"], method == "lora")
        modes += [(method, "ours", flops, lambda method=method: run_ours(
                      causal_recipe(f"fixed_{method}", model_dir, method, S, epochs=1), "language_modeling", [],
                      {"text": [text], "label": [None]}, S["device"], S["warm"])),
                  (method, "trainer", flops, lambda method=method: run_trainer(
                      load_for_trainer(model_dir, method), blocks, default_data_collator, S["batch"], 1,
                      S["device"], S["warm"]))]
    return modes


def case_instruction(S: dict, model_dir: Path, n: int):
    """Variable-length conversations: ours packs them, Trainer pads each batch."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from ft_assets.lib.training.causal_data import ensure_pad_token, pack_examples, tokenize_conversations
    from ft_assets.lib.training.causal import causal_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)  # as load_causal_lm does; the saved tokenizer has its own pad token anyway
    conversations = dolly_conversations(S["examples"])
    # Drop the last few conversations until ours' packed sequences fill whole batches: a smaller last
    # batch is a new shape, and a compiled model would recompile for it inside the measured steps.
    per_conversation = [tokenize_conversations(tokenizer, [c], S["seq"])[0] for c in conversations]
    k = len(conversations)
    while k and len(pack_examples([e for ex in per_conversation[:k] for e in ex], S["seq"])) % S["batch"]:
        k -= 1
    conversations = conversations[:k]
    examples, counts = causal_examples(tokenizer, "instruction", conversations, S["seq"], packing=False)
    packed, _ = causal_examples(tokenizer, "instruction", conversations, S["seq"], packing=True)
    # Enough epochs for ours to take warmup + steps steps; Trainer trains the same epochs.
    epochs = math.ceil((S["warm"] + S["steps"]) / math.ceil(len(packed) / S["batch"]))
    for ex in examples:
        ex["attention_mask"] = [1] * len(ex["input_ids"])
    lengths = [len(ex["input_ids"]) for ex in examples]
    # Attention FLOPs at each conversation's own length, token-weighted: what the work needs.
    seq_eff = sum(x * x for x in lengths) / sum(lengths)
    print(json.dumps({"case": "instruction", "conversations": counts["conversations"], "examples": len(examples),
                      "truncated": counts["truncated"], "packed_sequences": len(packed), "epochs": epochs,
                      "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths)}), flush=True)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    rows = {"text": conversations, "label": [None] * len(conversations)}
    modes, flex = [], []
    for method in S["methods"]:
        flops = flops_per_token(n, S["arch"], seq_eff, method == "lora")
        modes += [(method, "ours", flops, lambda method=method: run_ours(
                      causal_recipe(f"instruction_{method}", model_dir, method, S, epochs=epochs, packing=True),
                      "instruction", [], rows, S["device"], S["warm"])),
                  (method, "trainer", flops, lambda method=method: run_trainer(
                      load_for_trainer(model_dir, method), examples, collate, S["batch"], epochs, S["device"],
                      S["warm"]))]
        if S["device"] == "cuda":  # training.attention flex_attention: each conversation attends to itself only
            flex.append((method, "ours_flex", flops, lambda method=method: run_ours(
                causal_recipe(f"instruction_{method}_flex", model_dir, method, S, epochs=epochs, packing=True,
                              attention="flex_attention"), "instruction", [], rows, S["device"], S["warm"])))
    return modes + flex  # after the (ours, trainer) pairs, which --trainer-first swaps


def case_classification(S: dict):
    """MiniLM on Banking77: ours' dynamic padding and length grouping against run_glue's max_length padding."""
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              default_data_collator)

    from ft_assets.lib.training.base_models import quiet_hf_logging, resolve_base_model

    batch, max_length = S["cls_batch"], 128
    rows, labels = banking77_rows(S["examples"] or (S["warm"] + S["steps"]) * batch, S["seed"])
    label_ids = {label: i for i, label in enumerate(labels)}
    path = resolve_base_model("default")
    quiet_hf_logging()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # run_glue.py with --pad_to_max_length (its default): every row padded to max_seq_length.
    dataset = Dataset.from_dict({"sentence": rows["text"], "label": [label_ids[x] for x in rows["label"]]}).map(
        lambda b: tokenizer(b["sentence"], padding="max_length", max_length=max_length, truncation=True),
        batched=True)
    recipe = {"name": "classification_full", "dataset": "bench", "base_model": "default", "method": "full",
              "training": {"epochs": 1, "batch_size": batch, "max_length": max_length, "log_every_steps": 1,
                           "save_every_steps": 0, "compile": S["compile"], "seed": S["seed"]}}

    def trainer_model():
        torch.manual_seed(S["seed"])
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids)

    # For reference, not a target: Trainer set up as carefully as ours (per-batch padding, length
    # grouping), to show how much of the gap is padding and how much is the loop.
    unpadded = Dataset.from_dict({"sentence": rows["text"], "label": [label_ids[x] for x in rows["label"]]}).map(
        lambda b: tokenizer(b["sentence"], max_length=max_length, truncation=True), batched=True,
        remove_columns=["sentence"])
    return [("full", "ours", None, lambda: run_ours(recipe, "classification", labels, rows, S["device"], S["warm"])),
            ("full", "trainer", None, lambda: run_trainer(trainer_model(), dataset, default_data_collator, batch, 1,
                                                          S["device"], S["warm"])),
            ("full", "trainer_dynamic", None, lambda: run_trainer(
                trainer_model(), unpadded, DataCollatorWithPadding(tokenizer), batch, 1, S["device"], S["warm"],
                group_by_length=True))]


# --- report ---------------------------------------------------------------------------------------

def run_mode(case: str, method: str, engine: str, fn, flops: float | None, S: dict) -> dict:
    """One mode: its JSON row, or the row with its error (the next mode still runs)."""
    free_memory()
    started = time.perf_counter()
    row = {"case": case, "method": method, "engine": engine, "device": S["device"], "device_name": S["device_name"],
           "batch": S["cls_batch"] if case == "classification" else S["batch"],
           "max_length": 128 if case == "classification" else S["seq"], "warmup_steps": S["warm"],
           "load_1m_start": round(os.getloadavg()[0], 2)}  # above the core count: something else shares the CPUs
    try:
        measured = fn()
        cuda = S["device"] == "cuda"
        row.update(measured)
        row["mfu"] = round(measured["tokens_per_s"] * flops / PEAK_FLOPS, 3) if cuda and flops else None
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        for k in ("tokens_per_s", "examples_per_s", "run_tokens_per_s", "run_examples_per_s"):
            row[k] = round(row[k], 1)
        for k in ("step_s_median", "step_s_max"):
            row[k] = round(row[k], 4)
    except Exception as e:  # keep going: one failing mode must not cost the others
        traceback.print_exc()
        row["error"] = repr(e)[:500]
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["load_1m_end"] = round(os.getloadavg()[0], 2)
    torch._dynamo.reset()  # ours' compiled graphs hold the model; the next mode compiles its own
    free_memory()
    return row


def table(rows: list[dict], tiny: bool = False) -> str:
    """The modes, then one line per (case, method) with the ratios ours/Trainer and the target
    (not judged with --tiny: millisecond steps of a toy model say nothing about the targets)."""
    # max/median step: far above 1 means a slow step (a recompile, another process) inside the window;
    # raise --warmup-steps or rerun.
    lines = ["| case | method | engine | tokens/s | examples/s | run tok/s | MFU | peak GiB | compile | steps "
             "| max/median step |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['method']} | {r['engine']} | error: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['method']} | {r['engine']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['examples_per_s']:,.1f} | {r['run_tokens_per_s']:,.0f} | {fmt(r['mfu'])} | "
                     f"{fmt(r['peak_mem_gib'])} | {r['compile']} | {r['measured_steps']} | "
                     f"{r['step_s_max'] / r['step_s_median']:.1f} |")
    lines += ["", "| case | method | ours/Trainer tokens/s | ours/Trainer examples/s | same, whole run | target | met |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for (case, method), target in TARGETS.items():
        pair = {r["engine"]: r for r in rows if r["case"] == case and r["method"] == method and "error" not in r}
        if not {"ours", "trainer"} <= pair.keys():
            continue
        ours, hf = pair["ours"], pair["trainer"]
        tok, ex = ours["tokens_per_s"] / hf["tokens_per_s"], ours["examples_per_s"] / hf["examples_per_s"]
        headline = ex if case == "classification" else tok
        run = (ours["run_examples_per_s"] / hf["run_examples_per_s"] if case == "classification"
               else ours["run_tokens_per_s"] / hf["run_tokens_per_s"])
        met = headline >= target
        if case == "fixed" and method == "full" and ours["mfu"] is not None:
            met = met and ours["mfu"] >= MFU_TARGET
            target_text = f"{target}x, MFU {MFU_TARGET}"
        else:
            target_text = f"{target}x"
        verdict = "n/a (--tiny)" if tiny else "yes" if met else "no"
        lines.append(f"| {case} | {method} | {tok:.2f} | {ex:.2f} | {run:.2f} | {target_text} | {verdict} |")
        if "ours_flex" in pair:
            flex = pair["ours_flex"]
            flex_tok = flex["tokens_per_s"] / hf["tokens_per_s"]
            lines.append(f"| {case} | {method}, ours with attention flex_attention | {flex_tok:.2f} "
                         f"| {flex['examples_per_s'] / hf['examples_per_s']:.2f} "
                         f"| {flex['run_tokens_per_s'] / hf['run_tokens_per_s']:.2f} | {target_text} "
                         f"| {'yes' if flex_tok >= target else 'no'} |")
        if "trainer_dynamic" in pair:
            best = pair["trainer_dynamic"]
            lines.append(f"| {case} | {method}, vs Trainer with per-batch padding + group_by_length "
                         f"| {ours['tokens_per_s'] / best['tokens_per_s']:.2f} "
                         f"| {ours['examples_per_s'] / best['examples_per_s']:.2f} "
                         f"| {ours['run_examples_per_s'] / best['run_examples_per_s']:.2f} | (reference) | |")
    return "\n".join(lines)


def fmt(x) -> str:
    return "-" if x is None else f"{x}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup_steps is not None and args.warmup_steps < 1:
        raise SystemExit("--warmup-steps must be at least 1: the window starts at the end of the last warmup step")
    global DATA
    DATA = args.data.resolve()
    import peft
    import transformers

    from ft_assets.lib.training.device import describe_device
    from ft_assets.lib.training.base_models import quiet_hf_logging

    quiet_hf_logging()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    default_cases = "fixed,instruction,classification" if device == "cuda" or args.tiny else "classification"
    cases = (args.cases or default_cases).split(",")
    S = {
        "device": device, "device_name": describe_device(device), "tiny": args.tiny,
        "arch": TOY if args.tiny else TINYLLAMA, "seq": 64 if args.tiny else 2048, "batch": 2 if args.tiny else 8,
        "cls_batch": 8 if args.tiny else 32,
        "steps": args.steps or (4 if args.tiny else 20),
        "warm": args.warmup_steps if args.warmup_steps is not None else (1 if args.tiny else 5),
        "examples": args.examples if args.examples is not None else (64 if args.tiny else None),
        "methods": args.methods.split(","), "seed": args.seed,
        "compile": {"auto": device == "cuda", "on": True, "off": False}[args.compile],
    }
    slug = "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", S["device_name"].lower()).strip("-")
    out = args.out or REPO / "bench" / "results" / (
        f"train_throughput-{slug}{'-tiny' if args.tiny else ''}-{datetime.now().date().isoformat()}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"run": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv[1:],
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "device": device, "device_name": S["device_name"], "cases": cases, "steps": S["steps"],
            "warmup_steps": S["warm"], "ours_compile": S["compile"], "threads": torch.get_num_threads()}
    print(json.dumps(meta), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(meta) + "\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_llama_") as tmp:
        model_dir, n = Path(tmp), None
        if {"fixed", "instruction"} & set(cases):
            corpus = shakespeare_train().splitlines() + [
                m["content"] for c in dolly_conversations(None) for m in json.loads(c)]
            t0 = time.perf_counter()
            n = save_random_llama(S["arch"], S["seq"], corpus, model_dir, device)
            print(json.dumps({"model_dir_ready_s": round(time.perf_counter() - t0, 1), "params_nonembed": n}), flush=True)
        for case in cases:
            try:
                modes = {"fixed": lambda: case_fixed(S, model_dir, n),
                         "instruction": lambda: case_instruction(S, model_dir, n),
                         "classification": lambda: case_classification(S)}[case]()
                if args.trainer_first:  # modes come in (ours, trainer) pairs of one method
                    modes = [m for i in range(0, len(modes), 2) for m in modes[i:i + 2][::-1]]
                for method, engine, flops, fn in modes:
                    row = run_mode(case, method, engine, fn, flops, S)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    with out.open("a") as f:
                        f.write(json.dumps({**row, "run": meta["run"]}) + "\n")
            except Exception as e:  # a case's setup failed (data, tokenizer): the other cases still run
                traceback.print_exc()
                print(json.dumps({"case": case, "error": repr(e)[:500]}), flush=True)
    print()
    print(table(rows, tiny=args.tiny))
    print(f"\nJSON lines appended to {out}", flush=True)


if __name__ == "__main__":
    main()
