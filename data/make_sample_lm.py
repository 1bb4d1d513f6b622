"""Generate the committed sample corpora for the tiny causal-LM demo.

What this writes
----------------
Four files in two raw landing folders (every file in a landing folder is
ingested, so no README or other non-data file lives there)::

    data/raw/towns/towns_part1.txt
    data/raw/towns/towns_part2.txt
    data/raw/town_questions/questions_a.jsonl
    data/raw/town_questions/questions_chat.jsonl

Why
---
The demo pretrains a tiny causal LM from scratch (byte-level BPE, vocabulary
of about 2,000, trained on ``towns/``) and then instruction-tunes it on
``town_questions/``.  Nothing is downloaded: the text is written here, about a
fictional world, so the facts the model should know are known exactly and the
answers can be scored by exact match.

The world
---------
60 towns.  Each town has six fixed facts drawn by one seeded RNG from small
word lists: the river it lies on (12 rivers, 5 towns each), what it is famous
for making (20 crafts, 3 towns each), its festival month (12 months, 5 towns
each), the colour of its roofs (10 colours, 6 towns each), its neighbour
(towns are paired, so neighbours are mutual) and its founder (60 distinct
names).  Balanced draws mean no answer is a majority guess.

``towns/`` (plain ASCII, one paragraph per line)
------------------------------------------------
Encyclopedia-style lines (each fact of each town in all 7 sentence templates
of its kind, the canonical answer sentence among them, grouped into lines of
1-3 sentences about one town), two profile paragraphs per town, list
paragraphs per river, month, colour and craft, and short templated stories
that mix characters and towns and only ever state true facts.  Every fact of
every town is stated at least 9 times (7 fact sentences and 2 profiles, plus
any stories and lists); the lines are shuffled and split into
two files.  Each file has two blank lines (one empty, one of spaces) for the
cleaning step to drop.  All other lines are unique.

``town_questions/`` (JSON Lines)
--------------------------------
* ``questions_a.jsonl``: ``{"instruction", "input", "response"}``.  ``input``
  is ``""`` except for passage rows, where it holds 2-3 sentences of context.
  Plain questions (a few phrasings per fact), yes/no questions and
  "Answer using the passage." rows.  Every (town, fact) pair is asked at
  least once.
* ``questions_chat.jsonl``: ``{"messages": [{"role", "content"}, ...]}`` with
  roles ``user``/``assistant``; some rows start with a ``system`` message,
  some are two-turn (the follow-up says "it"/"its" for the same town).

Each fact kind has one canonical answer sentence (e.g. "Brindlemoor is
famous for its copper kettles."), used for every phrasing of the question
and for the passage rows, and stated verbatim in ``towns/``; a yes/no answer
is "Yes, " or "No, " followed by the canonical sentence of the true fact.
Every answer is one sentence of fewer than 20 words.  All 60 towns are asked
about; no town is held out here, so hold towns out in the split if the demo
wants to show transfer from pretraining alone.

Deliberately bad rows (15), each kind 3 times, at random positions:

* ``empty_response``: 2 rows in ``questions_a`` with ``"response": ""`` and
  1 chat row whose assistant message is ``""``;
* ``missing_response``: 3 rows in ``questions_a`` without a ``"response"``
  key;
* ``exact_duplicate``: 2 rows in ``questions_a`` and 1 in the chat file that
  repeat an earlier row of the same file byte for byte;
* ``invalid_json``: 2 lines in ``questions_a`` and 1 in the chat file that do
  not parse (cut off, single quotes, trailing comma);
* ``last_from_user``: 3 chat rows whose last message is the user's.

Regenerate
----------
::

    python3 data/make_sample_lm.py

Standard library only.  All randomness comes from one
``random.Random(20261127)`` and nothing iterates over sets, so the output is
byte-identical on every run.  The script prints one line per file.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SEED = 20261127
RAW_DIR = Path(__file__).resolve().parent / "raw"
TOWNS_DIR = RAW_DIR / "towns"
QUESTIONS_DIR = RAW_DIR / "town_questions"
N_TOWNS = 60
N_STORIES = 1320  # 22 per town
N_QUESTIONS_CLEAN = 691  # + 9 bad rows = 700
N_CHAT_SINGLE, N_CHAT_SYSTEM, N_CHAT_TWO_TURN = 105, 14, 25  # + 6 bad rows = 150
MAX_ANSWER_WORDS = 19
MAX_FILE_BYTES = 500_000

# --------------------------------------------------------------------------
# Word lists.  Town names are prefix + suffix so the BPE vocabulary stays
# small; no prefix is used more than twice.
# --------------------------------------------------------------------------
NAME_PREFIXES = [
    "Brindle", "Ash", "Thorn", "Elder", "Holly", "Marsh", "Stone", "Willow", "Fern",
    "Oak", "Raven", "Moss", "Heather", "Bramble", "Cold", "Fox", "Hazel", "Lark",
    "Mill", "Pen", "Salt", "Sedge", "Wren", "Yarrow", "Dun", "Kestrel", "Rush",
    "Alder", "Birch", "Hart", "Linden", "Otter", "Rook", "Thistle", "Bell",
]
NAME_SUFFIXES = [
    "moor", "ford", "wick", "by", "stead", "holm", "mere", "dale", "ton", "bury",
    "well", "combe", "field", "gate",
]
RIVERS = [
    "Wend", "Lissel", "Marrow", "Sallow", "Fenny", "Quill", "Dorran", "Hollin",
    "Tamber", "Ellow", "Brisk", "Nettle",
]
CRAFTS = [  # (plural, singular with article)
    ("copper kettles", "a copper kettle"), ("wool blankets", "a wool blanket"),
    ("glass lanterns", "a glass lantern"), ("clay pots", "a clay pot"),
    ("oak barrels", "an oak barrel"), ("honey cakes", "a honey cake"),
    ("silver bells", "a silver bell"), ("linen shirts", "a linen shirt"),
    ("leather boots", "a pair of leather boots"), ("paper kites", "a paper kite"),
    ("cheese wheels", "a cheese wheel"), ("iron nails", "a box of iron nails"),
    ("wooden toys", "a wooden toy"), ("wax candles", "a wax candle"),
    ("reed baskets", "a reed basket"), ("straw hats", "a straw hat"),
    ("brass keys", "a brass key"), ("fishing nets", "a fishing net"),
    ("tin whistles", "a tin whistle"), ("apple pies", "an apple pie"),
]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
]
COLOURS = ["red", "blue", "green", "yellow", "grey", "white", "black", "orange", "brown", "purple"]
FOUNDER_FIRST = [
    "Alwin", "Berta", "Cedric", "Dora", "Edmund", "Frida", "Godwin", "Hilda", "Ivor",
    "Jorun", "Leofric", "Mildred", "Osric", "Rowena", "Sigmund", "Wilma",
]
FOUNDER_LAST = [
    "Finch", "Marlow", "Thatcher", "Cooper", "Fletcher", "Harrow", "Quarry", "Weaver",
    "Mason", "Barrow", "Tanner", "Fowler",
]
CHARACTERS = [  # name, pronoun kind
    ("Mira", "f"), ("Tobin", "m"), ("Elsa", "f"), ("Rowan", "m"), ("Ida", "f"),
    ("Hugo", "m"), ("Nell", "f"), ("Pip", "m"), ("Greta", "f"), ("Otto", "m"),
    ("Lotte", "f"), ("Felix", "m"), ("Anya", "f"), ("Jonas", "m"), ("Maud", "f"),
    ("Silas", "m"), ("Tess", "f"), ("Ewan", "m"), ("Cora", "f"), ("Milo", "m"),
]
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}  # subject, object, possessive

FACT_KINDS = ["river", "craft", "festival", "roof", "neighbour", "founder"]


@dataclass(frozen=True)
class Town:
    name: str
    river: str
    craft: str  # plural, e.g. "copper kettles"
    item: str  # one of them, with article, e.g. "a copper kettle"
    month: str
    roof: str
    neighbour: str
    founder: str

    def value(self, kind: str) -> str:
        return {"river": self.river, "craft": self.craft, "festival": self.month,
                "roof": self.roof, "neighbour": self.neighbour, "founder": self.founder}[kind]


def _balanced(rng: random.Random, values: list, n: int) -> list:
    """n draws in which every value occurs n // len(values) times, shuffled."""
    out = [values[k % len(values)] for k in range(n)]
    rng.shuffle(out)
    return out


def make_world(rng: random.Random) -> list[Town]:
    names: list[str] = []
    prefix_uses: Counter = Counter()
    while len(names) < N_TOWNS:
        prefix, suffix = rng.choice(NAME_PREFIXES), rng.choice(NAME_SUFFIXES)
        name = prefix + suffix
        if name not in names and prefix_uses[prefix] < 2:
            names.append(name)
            prefix_uses[prefix] += 1
    founders: list[str] = []
    while len(founders) < N_TOWNS:
        founder = f"{rng.choice(FOUNDER_FIRST)} {rng.choice(FOUNDER_LAST)}"
        if founder not in founders:
            founders.append(founder)
    rivers = _balanced(rng, RIVERS, N_TOWNS)
    crafts = _balanced(rng, CRAFTS, N_TOWNS)
    months = _balanced(rng, MONTHS, N_TOWNS)
    roofs = _balanced(rng, COLOURS, N_TOWNS)
    order = list(range(N_TOWNS))
    rng.shuffle(order)
    neighbour = {}
    for a, b in zip(order[0::2], order[1::2]):  # mutual pairs
        neighbour[a], neighbour[b] = b, a
    return [
        Town(names[i], rivers[i], crafts[i][0], crafts[i][1], months[i], roofs[i],
             names[neighbour[i]], founders[i])
        for i in range(N_TOWNS)
    ]


# --------------------------------------------------------------------------
# Fact sentences.  The first template of each kind is the canonical answer.
# {T} is the town, {V} the value.
# --------------------------------------------------------------------------
FACT_TEMPLATES: dict[str, list[str]] = {
    "river": [
        "{T} lies on the river {V}.",
        "The river {V} flows through {T}.",
        "{T} was built on the banks of the river {V}.",
        "The town of {T} stands beside the river {V}.",
        "Boats on the river {V} stop at {T}.",
        "{T} is a town on the river {V}.",
        "If you follow the river {V}, you will come to {T}.",
    ],
    "craft": [
        "{T} is famous for its {V}.",
        "The people of {T} make {V}.",
        "Traders come to {T} to buy its {V}.",
        "Many families in {T} earn their living making {V}.",
        "The {V} of {T} are known in every town.",
        "In {T}, almost every workshop makes {V}.",
        "If you want good {V}, go to {T}.",
    ],
    "festival": [
        "The festival of {T} is held in {V}.",
        "Every year in {V}, {T} holds its festival.",
        "{T} celebrates its festival in {V}.",
        "In {V}, the streets of {T} fill with music for the town festival.",
        "The people of {T} wait all year for the festival in {V}.",
        "Visitors come to {T} in {V} for the festival.",
        "The town festival of {T} takes place in {V}.",
    ],
    "roof": [
        "The roofs of {T} are {V}.",
        "{T} is a town of {V} roofs.",
        "Travellers know {T} by its {V} roofs.",
        "Every house in {T} has a {V} roof.",
        "From the hills you can see the {V} roofs of {T}.",
        "In {T}, the roofs are painted {V}.",
        "{T} has {V} roofs.",
    ],
    "neighbour": [
        "The neighbour of {T} is {V}.",
        "{T} and {V} are neighbouring towns.",
        "{T} lies next to its neighbour {V}.",
        "From {T} it is a short walk to the neighbouring town of {V}.",
        "The nearest town to {T} is its neighbour {V}.",
        "{V} is the neighbour of {T}.",
        "The road from {T} leads to its neighbour {V}.",
    ],
    "founder": [
        "{T} was founded by {V}.",
        "{V} founded {T} long ago.",
        "The founder of {T} was {V}.",
        "Long ago, {V} built the first house in {T}.",
        "The town of {T} was started by {V}.",
        "The people of {T} remember {V}, who founded the town.",
        "There is a statue of {V}, the founder of {T}, in the town square.",
    ],
}

PROFILE_TEMPLATES = [
    "{T} is a town on the river {river}. It was founded by {founder}. The people of {T} make "
    "{craft}, and the roofs of the town are {roof}. The festival of {T} is held in {month}, and "
    "its neighbour is {neighbour}.",
    "{T} was founded by {founder} on the banks of the river {river}. Today it is famous for its "
    "{craft}. Its houses have {roof} roofs. The town holds its festival in {month}. The "
    "neighbouring town is {neighbour}.",
    "The town of {T} lies on the river {river}, next to its neighbour {neighbour}. {T} is famous "
    "for its {craft}. Its roofs are {roof}, and its festival is in {month}. The founder of {T} "
    "was {founder}.",
    "{T}: a town on the river {river}, founded by {founder}, famous for its {craft}, with {roof} "
    "roofs. Festival month: {month}. Neighbour: {neighbour}.",
]

# Stories.  A is the main town, B its neighbour, C another town on A's river,
# D any other town; n and m are characters (p/o/g: pronoun subject/object/
# possessive, P: capitalised subject).  Only true facts are ever stated.
STORY_TEMPLATES = [
    "{n} grew up in {A}, where the roofs are {A_roof}. Every day {p} watched the boats on the "
    "river {A_river}. When {p} was older, {p} learned to make {A_craft}, like everyone in {A}.",
    "In {B_month}, {n} walked from {A} to the neighbouring town of {B} for its festival. {B} has "
    "{B_roof} roofs, and the square was full of {B_craft}. At night {n} walked home to {A}.",
    "{n} was a trader from {A}. {P} took a boat down the river {A_river} to {C}, carrying a load "
    "of {A_craft}. In {C} {p} sold them all and bought {C_craft} to take home.",
    "Long ago, {A_founder} built the first house in {A}. {n} tells this story to the children of "
    "{A} every {A_month}, when the town holds its festival.",
    "{n} and {m} are old friends. {n} lives in {A} and {m} lives in {B}, and the two towns are "
    "neighbours. Every {A_month} {m} visits {A} for the festival, and every {B_month} {n} visits {B}.",
    "A traveller asked {n} the way to {A}. \"Follow the river {A_river},\" said {n}. \"When you "
    "see {A_roof} roofs, you are in {A}.\"",
    "{n} bought {A_item} in {A} and gave it to {m} in {D}. {m} was happy, because everyone knows "
    "that the best {A_craft} come from {A}.",
    "When {n} was a child in {A}, {g} grandmother told {o} about {A_founder}, the founder of the "
    "town. {P} still remembers the story every time {p} walks by the river {A_river}.",
    "The festival of {A} is held in {A_month}. That year {n} came from {D} to see it. {P} saw the "
    "{A_roof} roofs of {A} and bought {A_item} to take home.",
    "{n} lost {g} way between {A} and {B}. A kind baker from {B} showed {o} the road, and {n} "
    "reached {B} before dark. {B} lies on the river {B_river}.",
    "On a cold morning {n} left {A} with a basket of {A_craft}. {P} walked to {B}, the neighbour "
    "of {A}, and traded them for {B_craft}.",
    "{n} has lived in {A} all {g} life. {P} says that no town makes better {A_craft}, and no "
    "town has finer {A_roof} roofs.",
    "The children of {A} asked {n} who founded their town. \"{A_founder} founded {A},\" said {n}, "
    "\"and built it on the river {A_river}.\"",
    "{n} took a boat along the river {A_river}. The boat stopped at {A} and then at {C}, two "
    "towns that lie on the river {A_river}.",
    "Every year in {A_month}, {n} helps to hang lanterns in {A} for the festival. From the hill "
    "{p} can see the {A_roof} roofs of {A} and the road to {B}.",
    "{m} from {D} asked {n} what {A} is famous for. \"{A} is famous for its {A_craft},\" said "
    "{n}. So {m} went to {A} and bought {A_item}.",
    "{n} painted a picture of {A}. In the picture the roofs are {A_roof}, the river {A_river} "
    "runs past the houses, and {A_item} sits in a window.",
    "When the river {A_river} was high, {n} could not go on to {C}. {P} waited in {A} for three "
    "days and helped the people there make {A_craft}.",
    "{n} is writing a book about {A_founder}, who founded {A}. In the book, {A_founder} chose the "
    "place because of the river {A_river}.",
    "{n} and {m} met at the festival of {B} in {B_month}. {n} had come from {A}, which is the "
    "neighbour of {B}.",
    "{n} sold {A_craft} at the market in {D}. \"Where are these from?\" asked a man. \"From {A}, "
    "on the river {A_river},\" said {n}.",
    "{n} walked all day to reach {A}. {P} knew the town at once by its {A_roof} roofs. That night "
    "{p} slept in {A}, and in the morning {p} went on to {B}.",
    "In {A_month} the bells ring in {A}, because it is the month of the festival. {n} hears them "
    "from {B}, the next town.",
    "{n} the fisher lives in {A} and fishes in the river {A_river}. {P} sells fish in {A} and in "
    "{C}, which lies on the same river.",
    "{m} wanted {A_item}, so {n} wrote to a friend in {A}. {A} is famous for its {A_craft}, and "
    "the gift came in a week.",
]


def _join(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1]


def _fill_fact(kind: str, template: str, town: Town) -> str:
    return template.format(T=town.name, V=town.value(kind))


def fact_lines(rng: random.Random, world: list[Town]) -> list[str]:
    """Every fact of every town in every template, 1-3 sentences a line."""
    lines = []
    for town in world:
        sentences = [_fill_fact(kind, t, town) for kind in FACT_KINDS for t in FACT_TEMPLATES[kind]]
        rng.shuffle(sentences)
        while sentences:
            k = rng.choice([1, 1, 1, 2, 2, 3])
            lines.append(" ".join(sentences[:k]))
            sentences = sentences[k:]
    return lines


def profile_lines(rng: random.Random, world: list[Town]) -> list[str]:
    lines = []
    for town in world:
        for template in rng.sample(PROFILE_TEMPLATES, 2):
            lines.append(template.format(T=town.name, river=town.river, founder=town.founder,
                                         craft=town.craft, roof=town.roof, month=town.month,
                                         neighbour=town.neighbour))
    return lines


def list_lines(world: list[Town]) -> list[str]:
    lines = []
    for river in RIVERS:
        names = [t.name for t in world if t.river == river]
        lines.append(f"The river {river} flows past {_join(names)}.")
        lines.append(f"These towns lie on the river {river}: {_join(names)}.")
    for month in MONTHS:
        names = [t.name for t in world if t.month == month]
        lines.append(f"In {month}, festivals are held in {_join(names)}.")
        lines.append(f"The towns that hold their festival in {month} are {_join(names)}.")
    for colour in COLOURS:
        names = [t.name for t in world if t.roof == colour]
        lines.append(f"Towns with {colour} roofs include {_join(names)}.")
        lines.append(f"The roofs are {colour} in {_join(names)}.")
    for craft, _ in CRAFTS:
        names = [t.name for t in world if t.craft == craft]
        lines.append(f"{craft.capitalize()} are made in {_join(names)}.")
        lines.append(f"If you need {craft}, you can find them in {_join(names)}.")
    return lines


def story_lines(rng: random.Random, world: list[Town]) -> list[str]:
    by_name = {t.name: t for t in world}
    mains = _balanced(rng, world, N_STORIES)
    templates = _balanced(rng, STORY_TEMPLATES, N_STORIES)
    seen: set[str] = set()
    lines = []
    for a, template in zip(mains, templates):
        for _ in range(100):  # redraw characters and towns until the story is new
            b = by_name[a.neighbour]
            c = rng.choice([t for t in world if t.river == a.river and t is not a])
            d = rng.choice([t for t in world if t is not a and t is not b])
            (n, nk), (m, _) = rng.sample(CHARACTERS, 2)
            subj, obj, pos = PRONOUNS[nk]
            slots = {"n": n, "m": m, "p": subj, "P": subj.capitalize(), "o": obj, "g": pos}
            for key, town in (("A", a), ("B", b), ("C", c), ("D", d)):
                slots.update({key: town.name, f"{key}_river": town.river, f"{key}_craft": town.craft,
                              f"{key}_item": town.item, f"{key}_month": town.month,
                              f"{key}_roof": town.roof, f"{key}_founder": town.founder})
            text = template.format(**slots)
            text = text[0].upper() + text[1:]  # "{A_item}" may open a sentence
            if text not in seen:
                seen.add(text)
                lines.append(text)
                break
        else:
            raise RuntimeError(f"could not render a new story from {template[:40]!r}")
    return lines


def build_towns(rng: random.Random, world: list[Town]) -> dict[str, list[str]]:
    lines = fact_lines(rng, world) + profile_lines(rng, world) + list_lines(world) + story_lines(rng, world)
    rng.shuffle(lines)
    half = len(lines) // 2
    files = {"towns_part1.txt": lines[:half], "towns_part2.txt": lines[half:]}
    for rows in files.values():  # two blank lines per file, away from the edges
        for blank in ["", "   "]:
            rows.insert(rng.randint(100, len(rows) - 100), blank)
    return files


# --------------------------------------------------------------------------
# Questions.  Every phrasing of a kind gets the canonical answer sentence.
# --------------------------------------------------------------------------
QUESTION_TEMPLATES: dict[str, list[str]] = {
    "river": ["Which river does {T} lie on?", "What river flows through {T}?",
              "On which river is {T}?", "Name the river of {T}."],
    "craft": ["What do the people of {T} make?", "What is {T} famous for?",
              "What is {T} known for making?", "What can you buy in {T}?"],
    "festival": ["In which month is the festival of {T}?", "When does {T} hold its festival?",
                 "What month is the festival of {T} held in?"],
    "roof": ["What colour are the roofs of {T}?", "What colour roofs does {T} have?",
             "Describe the roofs of {T}."],
    "neighbour": ["Name the neighbour of {T}.", "Which town is the neighbour of {T}?",
                  "What town lies next to {T}?"],
    "founder": ["Who founded {T}?", "Who was the founder of {T}?",
                "Who built the first house in {T}?"],
    "founder_reverse": ["Which town was founded by {V}?", "What town did {V} found?"],
}
YES_NO_TEMPLATES = {
    "river": "Does {T} lie on the river {V}?",
    "craft": "Is {T} famous for its {V}?",
    "festival": "Is the festival of {T} held in {V}?",
    "roof": "Are the roofs of {T} {V}?",
    "neighbour": "Is {V} the neighbour of {T}?",
    "founder": "Was {T} founded by {V}?",
}
FOLLOW_UPS = {  # second chat turn about the same town
    "river": "And which river does it lie on?",
    "craft": "And what is it famous for?",
    "festival": "And when is its festival?",
    "roof": "And what colour are its roofs?",
    "neighbour": "And which town is its neighbour?",
    "founder": "And who founded it?",
}
SYSTEM_PROMPTS = [
    "You answer questions about the towns of the valley in one sentence.",
    "You are a guide to the towns of the valley. Answer briefly.",
    "Answer in one short sentence.",
]
KIND_WEIGHTS = {"river": 6, "craft": 6, "festival": 6, "roof": 6, "neighbour": 6, "founder": 6,
                "founder_reverse": 4}


def answer(kind: str, town: Town) -> str:
    kind = "founder" if kind == "founder_reverse" else kind
    return _fill_fact(kind, FACT_TEMPLATES[kind][0], town)


def _yes_no_answer(yes: bool, kind: str, town: Town) -> str:
    sentence = answer(kind, town)
    if sentence.startswith("The "):
        sentence = "the " + sentence[4:]
    return ("Yes, " if yes else "No, ") + sentence


def _wrong_value(rng: random.Random, kind: str, town: Town, world: list[Town]) -> str:
    pool = {"river": RIVERS, "craft": [c for c, _ in CRAFTS], "festival": MONTHS, "roof": COLOURS,
            "neighbour": [t.name for t in world if t.name != town.name],
            "founder": [t.founder for t in world]}[kind]
    return rng.choice([v for v in pool if v != town.value(kind)])


class QuestionMaker:
    """Questions with their canonical answers; no question text is used twice."""

    def __init__(self, rng: random.Random, world: list[Town]) -> None:
        self.rng = rng
        self.world = world
        self.seen: set[str] = set()

    def plain(self, kind: str, town: Town) -> tuple[str, str] | None:
        templates = [t for t in QUESTION_TEMPLATES[kind]
                     if t.format(T=town.name, V=town.founder) not in self.seen]
        if not templates:
            return None
        question = self.rng.choice(templates).format(T=town.name, V=town.founder)
        self.seen.add(question)
        return question, answer(kind, town)

    def yes_no(self, kind: str, town: Town) -> tuple[str, str]:
        kind = "founder" if kind == "founder_reverse" else kind
        while True:
            yes = self.rng.random() < 0.5
            value = town.value(kind) if yes else _wrong_value(self.rng, kind, town, self.world)
            question = YES_NO_TEMPLATES[kind].format(T=town.name, V=value)
            if question not in self.seen:
                self.seen.add(question)
                return question, _yes_no_answer(yes, kind, town)

    def passage(self, kind: str, town: Town) -> tuple[str, str, str]:
        """(instruction, input, response): the passage states the fact in other words."""
        r = self.rng
        fact_kind = "founder" if kind == "founder_reverse" else kind
        sentences = [_fill_fact(fact_kind, r.choice(FACT_TEMPLATES[fact_kind][1:]), town)]
        other_kind = r.choice([k for k in FACT_KINDS if k != fact_kind])
        sentences.append(_fill_fact(other_kind, r.choice(FACT_TEMPLATES[other_kind]), town))
        if r.random() < 0.6:  # a distractor: the same kind of fact about another town
            other = r.choice([t for t in self.world if t is not town])
            sentences.append(_fill_fact(fact_kind, r.choice(FACT_TEMPLATES[fact_kind]), other))
        r.shuffle(sentences)
        text = " ".join(sentences)
        question = r.choice(QUESTION_TEMPLATES[kind]).format(T=town.name, V=town.founder)
        form = r.randrange(3)
        if form == 0:
            return "Answer using the passage.", f"Passage: {text}\nQuestion: {question}", answer(kind, town)
        if form == 1:
            return f"{question} Answer using the passage.", text, answer(kind, town)
        return f"Read the passage and answer: {question}", text, answer(kind, town)


def _pick_kind(rng: random.Random) -> str:
    kinds = list(KIND_WEIGHTS)
    return rng.choices(kinds, [KIND_WEIGHTS[k] for k in kinds])[0]


def build_questions_a(rng: random.Random, maker: QuestionMaker, world: list[Town]) -> list[dict]:
    # Every (town, fact) pair once, then random pairs up to the target count.
    pairs = [(kind, town) for town in world for kind in FACT_KINDS]
    rng.shuffle(pairs)
    rows = []
    while len(rows) < N_QUESTIONS_CLEAN:
        if pairs:
            kind, town = pairs.pop()
        else:
            kind, town = _pick_kind(rng), rng.choice(world)
        roll = rng.random()
        if roll < 0.18:
            instruction, context, response = maker.passage(kind, town)
            kind_tag = "passage"
        elif roll < 0.30:
            (instruction, response), context, kind_tag = maker.yes_no(kind, town), "", "yes_no"
        else:
            got = maker.plain(kind, town)
            if got is None:  # every phrasing of this pair is used; try another pair
                continue
            (instruction, response), context, kind_tag = got, "", "plain"
        rows.append({"kind": kind_tag, "row": {"instruction": instruction, "input": context,
                                               "response": response}})
    return rows


def build_questions_chat(rng: random.Random, maker: QuestionMaker, world: list[Town]) -> list[dict]:
    rows = []
    plan = ["single"] * N_CHAT_SINGLE + ["system"] * N_CHAT_SYSTEM + ["two_turn"] * N_CHAT_TWO_TURN
    rng.shuffle(plan)
    for shape in plan:
        while True:
            kind, town = _pick_kind(rng), rng.choice(world)
            got = maker.yes_no(kind, town) if rng.random() < 0.1 else maker.plain(kind, town)
            if got is not None:
                break
        messages = []
        if shape == "system":
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        messages += [{"role": "user", "content": got[0]}, {"role": "assistant", "content": got[1]}]
        if shape == "two_turn":
            first = "founder" if kind == "founder_reverse" else kind
            second = rng.choice([k for k in FACT_KINDS if k != first])
            messages += [{"role": "user", "content": FOLLOW_UPS[second]},
                         {"role": "assistant", "content": answer(second, town)}]
        rows.append({"kind": shape, "row": {"messages": messages}})
    return rows


def add_bad_rows(rng: random.Random, maker: QuestionMaker, world: list[Town],
                 qa: list[dict], chat: list[dict]) -> None:
    """Insert the deliberately bad rows at random positions (never the first 20)."""

    def insert(rows: list[dict], item: dict) -> int:
        pos = rng.randint(20, len(rows))
        rows.insert(pos, item)
        return pos

    def duplicate(rows: list[dict]) -> None:
        pos = rng.randint(40, len(rows))
        src = rows[rng.randrange(20, pos)]
        while src["kind"] not in ("plain", "passage", "yes_no", "single", "system", "two_turn"):
            src = rows[rng.randrange(20, pos)]
        rows.insert(pos, {"kind": "exact_duplicate", "row": json.loads(json.dumps(src["row"]))})

    def fresh_question() -> tuple[str, str]:
        while True:
            got = maker.plain(_pick_kind(rng), rng.choice(world))
            if got is not None:
                return got

    for _ in range(2):
        q, _a = fresh_question()
        insert(qa, {"kind": "empty_response", "row": {"instruction": q, "input": "", "response": ""}})
    for _ in range(3):
        q, _a = fresh_question()
        insert(qa, {"kind": "missing_response", "row": {"instruction": q, "input": ""}})
    for _ in range(2):
        duplicate(qa)
    q, a = fresh_question()
    insert(qa, {"kind": "invalid_json",
                "raw": '{"instruction": ' + json.dumps(q) + ', "input": "", "response": "' + a[: len(a) // 2]})
    q, a = fresh_question()
    insert(qa, {"kind": "invalid_json",
                "raw": "{'instruction': '" + q + "', 'input': '', 'response': '" + a + "'}"})

    q, _a = fresh_question()
    insert(chat, {"kind": "empty_response", "row": {"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": ""}]}})
    duplicate(chat)
    q, a = fresh_question()
    insert(chat, {"kind": "invalid_json", "raw": json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]})[:-1] + ",}"})
    q, _a = fresh_question()
    insert(chat, {"kind": "last_from_user", "row": {"messages": [{"role": "user", "content": q}]}})
    q, _a = fresh_question()
    insert(chat, {"kind": "last_from_user", "row": {"messages": [
        {"role": "system", "content": SYSTEM_PROMPTS[0]}, {"role": "user", "content": q}]}})
    q, a = fresh_question()
    insert(chat, {"kind": "last_from_user", "row": {"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a},
        {"role": "user", "content": rng.choice(list(FOLLOW_UPS.values()))}]}})


def _line(item: dict) -> str:
    return item["raw"] if "raw" in item else json.dumps(item["row"])


def build() -> tuple[list[Town], dict[str, list[str]], dict[str, list[dict]]]:
    rng = random.Random(SEED)
    world = make_world(rng)
    towns = build_towns(rng, world)
    maker = QuestionMaker(rng, world)
    qa = build_questions_a(rng, maker, world)
    chat = build_questions_chat(rng, maker, world)
    add_bad_rows(rng, maker, world, qa, chat)
    return world, towns, {"questions_a.jsonl": qa, "questions_chat.jsonl": chat}


def check(world: list[Town], towns: dict[str, list[str]], questions: dict[str, list[dict]]) -> None:
    """Invariants the demo relies on; raises RuntimeError naming the first broken one."""
    lines = [line for rows in towns.values() for line in rows]
    corpus = "\n".join(lines)
    text_lines = [line for line in lines if line.strip()]
    if len(text_lines) != len(set(text_lines)):
        raise RuntimeError("towns: non-blank lines must be unique")
    if not corpus.isascii():
        raise RuntimeError("towns: text must be plain ASCII")
    for town in world:
        for kind in FACT_KINDS:
            if answer(kind, town) not in corpus:
                raise RuntimeError(f"towns: canonical sentence missing: {answer(kind, town)!r}")
            mentions = sum(corpus.count(_fill_fact(kind, t, town)) for t in FACT_TEMPLATES[kind])
            if mentions < len(FACT_TEMPLATES[kind]):  # + 2 profile paragraphs, stories, lists
                raise RuntimeError(f"towns: {town.name} {kind} stated only {mentions} times")
        if corpus.count(town.name) < 30:
            raise RuntimeError(f"towns: {town.name} is mentioned too rarely")
    truths = {answer(kind, t) for t in world for kind in FACT_KINDS}
    truths |= {_yes_no_answer(True, k, t) for t in world for k in FACT_KINDS}
    truths |= {_yes_no_answer(False, k, t) for t in world for k in FACT_KINDS}
    asked: Counter = Counter()
    for name, items in questions.items():
        for item in items:
            if "raw" in item:
                continue
            row = item["row"]
            if item["kind"] in ("exact_duplicate", "empty_response", "missing_response", "last_from_user"):
                continue
            answers = ([row["response"]] if "response" in row
                       else [m["content"] for m in row["messages"] if m["role"] == "assistant"])
            for a in answers:
                if a not in truths:
                    raise RuntimeError(f"{name}: answer is not a canonical true sentence: {a!r}")
                if len(a.split()) > MAX_ANSWER_WORDS:
                    raise RuntimeError(f"{name}: answer too long: {a!r}")
            if name == "questions_a.jsonl":
                for town in world:
                    asked_text = row["instruction"] + " " + row["input"]
                    if town.name in asked_text or town.founder in asked_text:
                        asked[town.name] += 1
    missing = [t.name for t in world if asked[t.name] == 0]
    if missing:
        raise RuntimeError(f"questions_a: towns never asked about: {missing}")
    for name, items in questions.items():
        good = [_line(i) for i in items if i["kind"] != "exact_duplicate" and "raw" not in i]
        if len(good) != len(set(good)):
            raise RuntimeError(f"{name}: rows other than the deliberate duplicates repeat")
        for i in items:
            if "raw" in i:
                try:
                    json.loads(i["raw"])
                except ValueError:
                    continue
                raise RuntimeError(f"{name}: invalid_json row parses: {i['raw']!r}")


def write(towns: dict[str, list[str]], questions: dict[str, list[dict]]) -> list[Path]:
    TOWNS_DIR.mkdir(parents=True, exist_ok=True)
    QUESTIONS_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, lines in towns.items():
        path = TOWNS_DIR / name
        path.write_text("".join(line + "\n" for line in lines), encoding="ascii", newline="\n")
        paths.append(path)
    for name, items in questions.items():
        path = QUESTIONS_DIR / name
        path.write_text("".join(_line(i) + "\n" for i in items), encoding="ascii", newline="\n")
        paths.append(path)
    for path in paths:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RuntimeError(f"{path} is {path.stat().st_size} bytes, over {MAX_FILE_BYTES}")
    return paths


def report(paths: list[Path], questions: dict[str, list[dict]]) -> None:
    for path in paths:
        n_lines = len(path.read_text(encoding="ascii").splitlines())
        extra = ""
        if path.name in questions:
            kinds = Counter(i["kind"] for i in questions[path.name])
            extra = "  " + ", ".join(f"{k}={kinds[k]}" for k in sorted(kinds))
        else:
            blanks = sum(1 for line in path.read_text(encoding="ascii").splitlines() if not line.strip())
            extra = f"  blank={blanks}"
        print(f"{path.relative_to(RAW_DIR.parent.parent)}: {n_lines} rows, {path.stat().st_size} bytes{extra}")


def main() -> None:
    world, towns, questions = build()
    check(world, towns, questions)
    paths = write(towns, questions)
    report(paths, questions)


if __name__ == "__main__":
    main()
