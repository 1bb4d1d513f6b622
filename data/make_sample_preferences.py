"""Generate the committed sample preference pairs for the tiny causal-LM demo.

What this writes
----------------
Two files in one raw landing folder (every file in a landing folder is
ingested, so no README or other non-data file lives there)::

    data/raw/town_preferences/preferences_trl.jsonl
    data/raw/town_preferences/preferences_openai.jsonl

Why
---
The demo instruction-tunes a tiny causal LM on ``town_questions/`` (see
``data/make_sample_lm.py``); these pairs then tune it to prefer the true
answer to a question about a town over the same answer with a false fact
(DPO and its kin, or a reward model).  The world is the one of
``make_sample_lm.py``, rebuilt from its seed: the same 60 towns and six facts
each, so which answer is right is known exactly.

The pairs
---------
Each pair is a question about a town, phrased as the ``town_questions``
questions are (the same question templates: plain questions about each fact,
"Which town was founded by ...?", and yes/no questions), a chosen answer and
a rejected one:

* chosen: the canonical answer sentence of ``town_questions`` (e.g.
  "Ashford lies on the river Wend."; a yes/no answer is "Yes, " or "No, "
  followed by the canonical sentence of the true fact);
* rejected: the same sentence with a false fact: another value of the same
  kind (another river, craft, month, colour, town or founder, each the value
  of some other town), or for a yes/no question the opposite verdict with the
  false value ("Yes, Ashford lies on the river Quill.").

270 pairs on 270 distinct questions: one or two facts of every town (90 facts),
each asked in three phrasings (plain questions, now and then a yes/no one),
one pair per question.  The dataset's split is by prompt, so most test
questions ask a fact that train pairs taught in other words.  No pair is
malformed: every record is clean.

The files (two layouts, so that ``record: preference`` alone reads both)
-----------------------------------------------------------------------
* ``preferences_trl.jsonl`` (150 pairs): TRL's standard form,
  ``{"prompt": question, "chosen": answer, "rejected": answer}``.
* ``preferences_openai.jsonl`` (120 pairs): OpenAI's preference fine-tuning
  form, ``{"input": {"messages": [...]}, "preferred_output": [{"role":
  "assistant", "content": answer}], "non_preferred_output": [...]}``; about
  a fifth of the prompts start with one of ``town_questions``' system messages.

Regenerate
----------
::

    python3 data/make_sample_preferences.py

Standard library only.  The world comes from ``make_sample_lm``'s seed, the
pairs from ``random.Random(SEED)``, and nothing iterates over sets, so the
output is byte-identical on every run.  The script prints one line per file.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import make_sample_lm as lm

SEED = 20261201
OUT_DIR = Path(__file__).resolve().parent / "raw" / "town_preferences"
# Every town's fact is asked in several phrasings, and the split is by prompt: most test questions ask a fact
# that train pairs taught in other words, so a model can learn the facts, not only the sentence shapes. With
# one phrasing per fact, a test fact was one no train pair had taught, and every value (a colour, a month) is
# true of some towns and false of others: DPO learned which values train pairs rejected and preferred the
# wrong answer on new facts (validation preference accuracy 0.20-0.36 in a sweep of rates and betas).
FACTS_PER_TOWN = (1, 2)  # towns alternate between one and two facts: 90 facts
PHRASINGS = 3  # questions per fact, one pair each: 270 pairs
N_TRL = 150  # the rest go to the OpenAI file
YES_NO_SHARE = 0.2
SYSTEM_SHARE = 0.2  # of the OpenAI file's prompts
MAX_FILE_BYTES = 200_000


@dataclass(frozen=True)
class Pair:
    question: str
    chosen: str
    rejected: str
    town: str
    kind: str  # a FACT_KINDS kind, or founder_reverse (the town is the value)
    false_value: str  # what the rejected answer says instead of the true value


def _false_sentence(kind: str, town: lm.Town, wrong: str) -> str:
    """The canonical answer sentence of the fact, with `wrong` for the true value (founder_reverse: the
    founder stays, the town is wrong)."""
    if kind == "founder_reverse":
        return lm.FACT_TEMPLATES["founder"][0].format(T=wrong, V=town.founder)
    return lm.FACT_TEMPLATES[kind][0].format(T=town.name, V=wrong)


def _wrong(rng: random.Random, kind: str, town: lm.Town, world: list[lm.Town], taken: list[str]) -> str:
    """A false value for the fact, other than those in `taken` (each the value of some other town)."""
    while True:
        if kind == "founder_reverse":
            value = rng.choice([t.name for t in world if t.name != town.name])
        else:
            value = lm._wrong_value(rng, kind, town, world)
        if value not in taken:
            return value


def plain_pairs(rng: random.Random, kind: str, town: lm.Town, world: list[lm.Town], seen: list[str],
                pairs: int) -> list[Pair]:
    """`pairs` pairs on one new plain question about the fact, each with another false value."""
    templates = [t for t in lm.QUESTION_TEMPLATES[kind] if t.format(T=town.name, V=town.founder) not in seen]
    if not templates:
        return []
    question = rng.choice(templates).format(T=town.name, V=town.founder)
    seen.append(question)
    chosen, taken = lm.answer(kind, town), []
    for _ in range(pairs):
        taken.append(_wrong(rng, kind, town, world, taken))
    return [Pair(question, chosen, _false_sentence(kind, town, wrong), town.name, kind, wrong) for wrong in taken]


def yes_no_pair(rng: random.Random, kind: str, town: lm.Town, world: list[lm.Town], seen: list[str]) -> list[Pair]:
    """One pair on a new yes/no question: the true verdict and fact against the other verdict with a false fact."""
    kind = "founder" if kind == "founder_reverse" else kind
    for _ in range(20):
        yes = rng.random() < 0.5
        wrong = lm._wrong_value(rng, kind, town, world)
        question = lm.YES_NO_TEMPLATES[kind].format(T=town.name, V=town.value(kind) if yes else wrong)
        if question in seen:
            continue
        seen.append(question)
        false = _false_sentence(kind, town, wrong)
        if false.startswith("The "):
            false = "the " + false[4:]
        return [Pair(question, lm._yes_no_answer(yes, kind, town), ("No, " if yes else "Yes, ") + false, town.name,
                     kind, wrong)]
    return []


def build() -> tuple[list[lm.Town], list[list[Pair]]]:
    """The world and the pairs, grouped by question (a group is one prompt's pairs): FACTS_PER_TOWN facts of
    every town, each asked PHRASINGS ways, in random order."""
    world = lm.make_world(random.Random(lm.SEED))  # the world is make_sample_lm's first draw
    rng = random.Random(SEED)
    facts = [(kind, town) for i, town in enumerate(world)
             for kind in rng.sample(lm.FACT_KINDS, FACTS_PER_TOWN[i % len(FACTS_PER_TOWN)])]
    groups: list[list[Pair]] = []
    seen: list[str] = []
    for kind, town in facts:
        if kind == "founder" and rng.random() < 0.4:
            kind = "founder_reverse"  # founder questions are asked both ways
        asked = 0
        for _ in range(3 * PHRASINGS):
            if asked == PHRASINGS:
                break
            # Plain phrasings, now and then a yes/no question, and yes/no once the plain templates run out.
            group = ((rng.random() < YES_NO_SHARE and yes_no_pair(rng, kind, town, world, seen))
                     or plain_pairs(rng, kind, town, world, seen, 1) or yes_no_pair(rng, kind, town, world, seen))
            if group:
                groups.append(group)
                asked += 1
    rng.shuffle(groups)
    return world, groups


def trl_record(pair: Pair) -> dict:
    return {"prompt": pair.question, "chosen": pair.chosen, "rejected": pair.rejected}


def openai_record(pair: Pair, system: str | None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": pair.question}]
    return {"input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": pair.chosen}],
            "non_preferred_output": [{"role": "assistant", "content": pair.rejected}]}


def files(groups: list[list[Pair]]) -> dict[str, list[dict]]:
    """The first groups' pairs (N_TRL of them) in TRL's layout, the rest in OpenAI's; a prompt's pairs stay
    in one file, with one system message or none."""
    rng = random.Random(SEED + 1)
    trl, openai = [], []
    for group in groups:
        if len(trl) + len(group) <= N_TRL:
            trl += [trl_record(p) for p in group]
        else:
            system = rng.choice(lm.SYSTEM_PROMPTS) if rng.random() < SYSTEM_SHARE else None
            openai += [openai_record(p, system) for p in group]
    return {"preferences_trl.jsonl": trl, "preferences_openai.jsonl": openai}


def check(world: list[lm.Town], groups: list[list[Pair]], by_file: dict[str, list[dict]]) -> None:
    """Invariants the demo relies on; raises RuntimeError naming the first broken one."""
    truths = {lm.answer(kind, t) for t in world for kind in lm.FACT_KINDS}
    truths |= {lm._yes_no_answer(yes, k, t) for t in world for k in lm.FACT_KINDS for yes in (True, False)}
    towns = {t.name: t for t in world}
    pairs = [p for group in groups for p in group]
    for p in pairs:
        if p.chosen not in truths:
            raise RuntimeError(f"chosen answer is not a canonical true sentence: {p.chosen!r}")
        if p.rejected in truths or p.rejected == p.chosen:
            raise RuntimeError(f"rejected answer is true: {p.rejected!r}")
        # The rejected answer is the chosen sentence with another town's value for the true one (and, for a
        # yes/no question, the other verdict).
        town = towns[p.town]
        true_value = town.name if p.kind == "founder_reverse" else town.value(p.kind)
        others = [t.name if p.kind == "founder_reverse" else t.value(p.kind) for t in world if t is not town]
        if p.false_value == true_value or p.false_value not in others:
            raise RuntimeError(f"the false value is not another town's: {p!r}")
        restored = p.rejected.replace(p.false_value, true_value)
        if p.chosen.startswith(("Yes, ", "No, ")):
            restored = {"Yes, ": "No, ", "No, ": "Yes, "}[restored[:restored.index(" ") + 1]] + restored.split(" ", 1)[1]
        if restored != p.chosen:
            raise RuntimeError(f"the rejected answer is not the chosen sentence with a false fact: {p!r}")
        if len(p.chosen.split()) > lm.MAX_ANSWER_WORDS or len(p.rejected.split()) > lm.MAX_ANSWER_WORDS:
            raise RuntimeError(f"answer too long: {p!r}")
    questions = [group[0].question for group in groups]
    if len(questions) != len(set(questions)) or any(len({p.question for p in g}) != 1 for g in groups):
        raise RuntimeError("a question is asked by two groups, or a group mixes questions")
    if len({(p.question, p.rejected) for p in pairs}) != len(pairs):
        raise RuntimeError("a pair repeats")
    asked = Counter(p.town for p in pairs)
    missing = [t.name for t in world if not asked[t.name]]
    if missing:
        raise RuntimeError(f"towns never asked about: {missing}")
    if not all(len(rows) >= 100 for rows in by_file.values()) or sum(map(len, by_file.values())) != len(pairs):
        raise RuntimeError("each file must hold at least 100 pairs, and the files every pair")


def write(by_file: dict[str, list[dict]]) -> list[Path]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in by_file.items():
        path = OUT_DIR / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="ascii", newline="\n")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RuntimeError(f"{path} is {path.stat().st_size} bytes, over {MAX_FILE_BYTES}")
        paths.append(path)
    return paths


def report(paths: list[Path], groups: list[list[Pair]]) -> None:
    for path in paths:
        rows = path.read_text(encoding="ascii").splitlines()
        print(f"{path.relative_to(OUT_DIR.parent.parent.parent)}: {len(rows)} pairs, {path.stat().st_size} bytes")
    print(f"{len(groups)} questions, {sum(len(g) > 1 for g in groups)} with two pairs")


def main() -> None:
    world, groups = build()
    by_file = files(groups)
    check(world, groups, by_file)
    report(write(by_file), groups)


if __name__ == "__main__":
    main()
