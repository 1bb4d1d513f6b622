"""The project YAML as pydantic models: corpora, datasets, recipes and where they live.

Every default lives on a model here, so a recipe never reads `cfg.get(key, default)`. Loading
reports every problem at once, each naming the file, the entry and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator, model_validator,
)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
# What a defs.yaml names the FineTuningProject component by (defs/component.py); its `attributes` are a project.
COMPONENT_TYPES = frozenset({"ft_assets.FineTuningProject", "ft_assets.defs.component.FineTuningProject"})

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class ConfigError(ValueError):
    """The YAML does not describe a valid project; the message lists every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    # Where checkpoints, reports, leaderboards, champions and dataset exports live: a folder
    # (relative to this file) or s3://bucket/prefix, reached through s3fs.
    root: str = "data"
    # With an s3:// root, the local working folder: the DuckDB warehouse (a file, so it stays on
    # local disk or a volume) and the working copies of what is published to the root.
    local: str = "data"
    # The memory DuckDB may use in a warehouse step (DuckDB's memory_limit: 512MB, 4GB, ...). Past it,
    # sorts, joins and working tables spill to <warehouse>.duckdb.tmp/, so what a build holds does
    # not grow with the corpus; more memory makes large builds faster (bench/RESULTS.md).
    warehouse_memory: str = Field("512MB", pattern=r"^[0-9]+(\.[0-9]+)? ?([KMGT]i?B)$")


class InstructionFields(_Strict):
    """Where an instruction record keeps its parts: instruction / optional input / response, or chat messages."""

    instruction: str = "instruction"
    input: str = "input"
    response: str = "response"
    # A list of {"role": system|user|assistant, "content": str}; used when a record has it.
    messages: str = "messages"


class PreferenceFields(_Strict):
    """The fields of a preference record, when it is in none of the layouts read by themselves (see
    lib/ingest/readers.py PREFERENCE_LAYOUTS). Each may hold a text, chat messages
    ({"role", "content"}) or ShareGPT turns ({"from", "value"}); the prompt also {"messages": [...]}."""

    prompt: str
    chosen: str
    rejected: str

    @model_validator(mode="after")
    def _three_fields(self) -> PreferenceFields:
        names = [self.prompt, self.chosen, self.rejected]
        if len(set(names)) < 3:
            raise ValueError(f"prompt, chosen and rejected must name three different fields, not {names}")
        return self


class CorpusConfig(_Strict):
    name: Name
    # A landing folder (every file in it is read) or one file; relative to the storage root.
    path: str
    # json: one JSON array of records per file; jsonl: one record per line.
    format: Literal["csv", "tsv", "jsonl", "json", "parquet", "txt"]
    # `text`: one text (and label) per record; `instruction`: a conversation per record, stored as
    # chat messages JSON in the raw table's text column; `preference`: a prompt with a chosen and a
    # rejected answer, stored as {"prompt": [messages], "chosen", "rejected"} JSON.
    record: Literal["text", "instruction", "preference"] = "text"
    instruction_fields: InstructionFields = InstructionFields()
    # None: each preference record's layout (TRL, OpenAI, ShareGPT) is recognised from its fields.
    preference_fields: PreferenceFields | None = None
    # Column names of header-less csv/tsv files, in order.
    columns: list[str] | None = None
    text_field: str = "text"
    label_field: str | None = None

    @model_validator(mode="after")
    def _columns_only_for_delimited(self) -> CorpusConfig:
        if self.record in ("instruction", "preference"):
            if self.format not in ("jsonl", "json", "parquet"):
                raise ValueError(f"{self.record} records are read from jsonl, json or parquet, not {self.format!r}")
            if self.label_field is not None:
                raise ValueError(f"{self.record} records have no label; drop label_field")
        if self.preference_fields is not None and self.record != "preference":
            raise ValueError(f"preference_fields is for `record: preference`, not {self.record!r} records")
        if self.columns is not None:
            if self.format not in ("csv", "tsv"):
                raise ValueError(f"columns is only for header-less csv/tsv, not format {self.format!r}")
            missing = [f for f in (self.text_field, self.label_field) if f and f not in self.columns]
            if missing:
                raise ValueError(f"columns {self.columns} lack the field(s) {missing}")
        if self.format == "txt" and self.label_field is not None:
            raise ValueError("txt corpora have one text per line and no labels; drop label_field")
        return self


ChampionTieBreak = Literal["forgetting", "trainable_params", "train_seconds"]


class ChampionConfig(_Strict):
    """How models/<dataset>/champion picks among the recipes whose gates all passed."""

    # The metric to rank by; None: the task's headline metric (accuracy, ROUGE-L, perplexity).
    metric: str | None = None
    # Recipes within this distance of the best metric count as tied...
    tolerance: float = Field(0.0, ge=0.0)
    # ...and ties go to the lowest of these, in order (forgetting: the recipe's forgetting figure;
    # a recipe that did not measure it loses the tie).
    tie_break: list[ChampionTieBreak] = ["forgetting", "trainable_params"]


class LearningCurveConfig(_Strict):
    """Each of `recipes` trained again on nested, stratified shares of the train split (lib/datasets/subsets.py),
    one Dagster partition per (recipe, fraction); fraction 1 is the recipe's own checkpoint and report."""

    fractions: list[float] = Field(min_length=1)
    recipes: list[Name] = Field(min_length=1)
    # Which rows each share holds; the same seed gives the same nested shares on every machine.
    seed: int = 0
    # A curve is a study: by default its points train when asked for. {min_interval: 1d} (or a cron) retrains
    # them after new data, gated as a recipe's retraining is; reports/learning_curve follows its inputs.
    retrain: RetrainConfig | Literal["manual"] = "manual"

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        wrong = [f for f in fractions if not 0.0 < f <= 1.0]
        if wrong:
            raise ValueError(f"each fraction must be in (0, 1]: {wrong}")
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"fractions has duplicates: {fractions}")
        return sorted(fractions)

    @property
    def partial_fractions(self) -> list[float]:
        """The fractions that train a point of their own (1 is the recipe's checkpoint)."""
        return [f for f in self.fractions if f < 1.0]


class DatasetConfig(_Strict):
    name: Name
    corpus: Name
    # classification: text -> one label; instruction: conversations for supervised fine-tuning of a
    # causal LM; language_modeling: raw text for (continued) pretraining, chunked into blocks;
    # preference: prompts with a chosen and a rejected answer (DPO and its kin, reward models).
    task: Literal["classification", "instruction", "language_modeling", "preference"] = "classification"
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # A corpus whose cleaned rows are the fixed test split instead of a hashed share.
    test_corpus: Name | None = None
    # The allowed labels; rows with any other label are quarantined. None: every label seen.
    labels: list[str] | None = None
    # Texts longer than this (after normalisation) are quarantined, not truncated.
    max_chars: int = Field(2000, gt=0)
    # Changing the salt reshuffles which rows land in which split.
    split_salt: str = ""
    # PII replaced by a placeholder in the clean text (see lib/datasets/redaction.py); raw tables keep what arrived.
    redact: list[Literal["email", "phone", "card_number"]] = []
    champion: ChampionConfig = ChampionConfig()
    # How much data each method needs: see LearningCurveConfig. None: no learning curve.
    learning_curve: LearningCurveConfig | None = None

    @model_validator(mode="after")
    def _fractions(self) -> DatasetConfig:
        test = 0.0 if self.test_corpus else self.test_fraction
        if self.validation_fraction + test >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% for training")
        if self.test_corpus is None and self.test_fraction == 0.0:
            raise ValueError("a dataset needs a test split: set test_fraction > 0 or test_corpus")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels has duplicates: {self.labels}")
        if self.labels is not None and self.task != "classification":
            raise ValueError(f"labels are for classification datasets, not task {self.task!r}")
        return self


class FullArgs(_Strict):
    pass


class HeadOnlyArgs(_Strict):
    pass


class FreezeArgs(_Strict):
    # The top `layers` transformer blocks train, with the head; the blocks below stay frozen.
    layers: int = Field(2, gt=0)


class LoraArgs(_Strict):
    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # None: PEFT's default for the architecture (query/value projections for BERT).
    target_modules: list[str] | None = None


class IA3Args(_Strict):
    # None: PEFT's defaults for the architecture (BERT: key, value and the feed-forward output).
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


class PromptTuningArgs(_Strict):
    num_virtual_tokens: int = Field(20, gt=0)
    # Start the soft prompt from the embeddings of this text instead of at random.
    init_text: str | None = None


class PrefixTuningArgs(_Strict):
    num_virtual_tokens: int = Field(20, gt=0)
    # Reparametrise the prefix through a small MLP (more stable, more parameters while training).
    prefix_projection: bool = False


METHOD_ARGS: dict[str, type[_Strict]] = {
    "full": FullArgs, "head_only": HeadOnlyArgs, "freeze": FreezeArgs,
    "lora": LoraArgs, "rslora": LoraArgs, "dora": LoraArgs, "qlora": LoraArgs,
    "ia3": IA3Args, "prompt_tuning": PromptTuningArgs, "prefix_tuning": PrefixTuningArgs,
}
Method = Literal["full", "head_only", "freeze", "lora", "rslora", "dora", "qlora", "ia3", "prompt_tuning",
                 "prefix_tuning"]

# A pretrained encoder updated in full wants a small step, but the head on top of it starts from
# random: at the encoder's 5e-5 it had not converged after 5 epochs on Banking77's 77 classes
# (test accuracy 0.80, below the frozen base with a trained head). PEFT methods train the head at
# their own, already large, rate.
DEFAULT_HEAD_LEARNING_RATE = {"full": 1e-3, "freeze": 1e-3}

MERGEABLE_METHODS = ("lora", "rslora", "dora", "qlora", "ia3")

# The fewer parameters a method trains, and the fresher they are, the larger the step they want:
# a full update of a pretrained encoder wants ~1e-5..1e-4, low-rank adapters ~1e-4..1e-3, scaling
# vectors and soft prompts ~1e-3..1e-1 (PEFT's own examples use 1e-2..3e-2 for prompt methods).
DEFAULT_LEARNING_RATE = {
    "full": 5e-5, "freeze": 1e-4, "head_only": 2e-3,
    "lora": 1e-3, "rslora": 1e-3, "dora": 1e-3, "qlora": 1e-3,
    "ia3": 5e-3, "prompt_tuning": 3e-2, "prefix_tuning": 1e-2,
}


# learning_rate: {search: auto}: the method's default with a step below and one above it; each candidate trains,
# and the best on validation is published (defs/training/lr_search.py).
LEARNING_RATE_GRID = {
    "full": [2e-5, 5e-5, 1e-4], "freeze": [3e-5, 1e-4, 3e-4], "head_only": [5e-4, 2e-3, 5e-3],
    "lora": [3e-4, 1e-3, 3e-3], "rslora": [3e-4, 1e-3, 3e-3], "dora": [3e-4, 1e-3, 3e-3], "qlora": [3e-4, 1e-3, 3e-3],
    "ia3": [2e-3, 5e-3, 1e-2], "prompt_tuning": [1e-2, 3e-2, 1e-1], "prefix_tuning": [3e-3, 1e-2, 3e-2],
}


class LearningRateSearch(_Strict):
    """Train the recipe once per rate and publish the run with the best validation metric; `auto`: the
    method's LEARNING_RATE_GRID. The test split plays no part in the choice."""

    search: Annotated[
        Annotated[list[Annotated[float, Field(gt=0)]], Tag("rates")] | Annotated[Literal["auto"], Tag("the grid")],
        Discriminator(lambda v: "the grid" if isinstance(v, str) else "rates"),
    ]

    @field_validator("search")
    @classmethod
    def _rates(cls, search):
        if search == "auto":
            return search
        if len(search) < 2:
            raise ValueError(f"a search needs at least two rates (got {search}); for one, give it as learning_rate")
        if len({learning_rate_key(r) for r in search}) != len(search):
            raise ValueError(f"search has duplicates: {search}")
        return sorted(search)


def learning_rate_key(rate: float) -> str:
    """A rate as a partition key and folder name: 1e-4, 3e-4, 2.5e-5."""
    mantissa, exponent = f"{rate:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


# One rate, or a {search: ...} block: told apart by the input's shape, so a wrong value gets the one error that
# fits it (an untagged union reports both), and _describe_errors leaves the tags out of the field's path.
_UNION_TAGS = {"one rate", "a search", "rates", "the grid"}
LearningRate = Annotated[
    Annotated[Annotated[float, Field(gt=0)], Tag("one rate")] | Annotated[LearningRateSearch, Tag("a search")],
    Discriminator(lambda v: "a search" if isinstance(v, (dict, LearningRateSearch)) else "one rate"),
]


class EarlyStoppingConfig(_Strict):
    """Stop after `patience` evaluations whose monitored figure did not improve by more than `min_delta`."""

    patience: int = Field(gt=0)
    min_delta: float = Field(0.0, ge=0.0)
    # metric: the task's selection metric (the one that picks the published step); loss: the validation loss,
    # which keeps improving after a small validation split's accuracy has saturated.
    monitor: Literal["metric", "loss"] = "metric"


class TrainingConfig(_Strict):
    epochs: int = Field(3, gt=0)
    # None: DEFAULT_LEARNING_RATE[method]; {search: [...] | auto}: a run per rate, the best on validation kept.
    learning_rate: LearningRate | None = None
    # The freshly initialised head (pooler + classifier) learns at this rate; None: the method's
    # DEFAULT_HEAD_LEARNING_RATE, else learning_rate.
    head_learning_rate: float | None = Field(None, gt=0)
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(64, gt=0, le=8192)
    seed: int = 0
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0)
    log_every_steps: int = Field(10, gt=0)
    # The optimizer steps once per gradient_accumulation_steps batches: the global batch is
    # batch_size × gradient_accumulation_steps × processes (the gpu resource's processes).
    gradient_accumulation_steps: int = Field(1, gt=0)
    # Learning rate after the linear warmup: linear decay to 0, or a cosine down to 0.
    schedule: Literal["linear", "cosine"] = "linear"
    # Recompute activations in the backward pass: much less memory for about a third more compute.
    gradient_checkpointing: bool = False
    # torch.compile the model. auto: on CUDA only; on a CPU the compile time outweighs small runs.
    compile: bool | Literal["auto"] = "auto"
    # Classification: batches of examples of similar length (little padding), in random order.
    group_by_length: bool = True
    # Every this many optimizer steps, keep what a killed run needs to resume here (0: never).
    save_every_steps: int = Field(200, ge=0)
    # Evaluate on the validation split every this many optimizer steps and at the last; None: once per epoch.
    eval_every_steps: int | None = Field(None, gt=0)
    # Which weights the checkpoint holds: those of the best validation evaluation (lib/training/selection.py)
    # or the last step's. None: best when the dataset has a validation split, else last.
    keep: Literal["best", "last"] | None = None
    # With keep best: also write the last step's weights, when they differ, under <checkpoint>/last/.
    keep_last: bool = False
    # Off by default: every epoch trains.
    early_stopping: EarlyStoppingConfig | None = None
    # instruction: several conversations per sequence, each attending only to itself.
    packing: bool = False
    # The attention kernel. auto: the model's default (SDPA where its architecture has it).
    # flex_attention (CUDA only: torch has no CPU backward for it) attends within each packed
    # conversation only, where SDPA computes the whole max_length square under a mask.
    attention: Literal["auto", "sdpa", "flex_attention", "eager"] = "auto"
    # Skewed label counts: `class_weights` weighs each class's loss by n / (k * n_class);
    # `balanced_sampler` draws training batches with every class equally likely.
    imbalance: Literal["none", "class_weights", "balanced_sampler"] = "none"

    def settings_needing_validation(self) -> list[str]:
        """The fields set here that a run without validation examples cannot honour."""
        return [field for field, on in (("keep", self.keep == "best"), ("keep_last", self.keep_last),
                                        ("early_stopping", self.early_stopping is not None),
                                        ("learning_rate.search", isinstance(self.learning_rate, LearningRateSearch)))
                if on]


class ScratchModelConfig(_Strict):
    """A causal LM initialised at random, with a byte-level BPE tokenizer trained on the recipe's data."""

    architecture: Literal["llama", "gpt2"] = "llama"
    vocab_size: int = Field(2048, ge=300)  # 256 byte symbols + merges + special tokens
    hidden_size: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    # The longest sequence the model can see (positions); training blocks use training.max_length.
    context: int = Field(512, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ScratchModelConfig:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")
        return self


class GenerationConfig(_Strict):
    """How an instruction recipe's test prompts are answered for exact match and ROUGE-L (greedy)."""

    max_new_tokens: int = Field(64, gt=0)
    # Score at most this many test conversations (None: all of them).
    max_examples: int | None = Field(None, gt=0)
    # Rows of prompt / reference / generation shown in the report.
    samples: int = Field(8, ge=0)


class ForgettingConfig(_Strict):
    """Measure what tuning cost the base: both models on the same texts, which the base knows (see
    lib/evaluation/forgetting.py)."""

    # A text corpus (txt, or text records) of general-purpose sentences, for a pretrained base that
    # learned such text. None: the held-out test split of the dataset the base recipe trained on, for
    # a checkpoint:<recipe> base (a base from scratch knows only its own data).
    corpus: Name | None = None
    max_texts: int = Field(500, gt=1)  # the first max_texts texts, in file order


class GatesConfig(_Strict):
    """What a recipe's report must show before its checkpoint may be promoted (see lib/evaluation/gates.py)."""

    # The headline test metric must beat the best baseline by at least this much, in the metric's
    # own units (accuracy, ROUGE-L, perplexity). 0: any improvement.
    min_margin: float = Field(0.0, ge=0.0)
    # The forgetting figure may not exceed this: representation drift for encoders (0..2),
    # loss increase in nats for causal LMs, on the forgetting texts. None: no forgetting gate.
    max_forgetting: float | None = None
    # The overfitting check (it warns, and never blocks: see lib/evaluation/overfitting.py) fires when the
    # validation loss rose by more than this share of its lowest value while the train loss kept falling.
    # None: no check.
    max_validation_rise: float | None = Field(0.1, ge=0.0)
    # A failed blocking gate fails the report at ERROR severity, so nothing downstream of it
    # (leaderboard, champion) runs in that run. Non-blocking gates warn. A recipe with any failed
    # gate, blocking or not, is never made champion.
    blocking: bool = False


class SftArgs(_Strict):
    pass


class DpoArgs(_Strict):
    # How far the policy may move from the reference: small beta, far (DPO paper: 0.1..0.5).
    beta: float = Field(0.1, gt=0)
    # cDPO: the share of pairs assumed to be labelled the wrong way round.
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    # Score every training pair with the frozen reference once, before the first step, and keep the
    # log-probabilities (keyed by the data and the reference weights), instead of a reference forward
    # pass per batch: less compute and, for a full recipe, no second model in memory while training.
    precompute_reference: bool = False


class IpoArgs(_Strict):
    # IPO's tau: the regularisation towards the reference (the margin it aims for is 1 / (2 beta)).
    beta: float = Field(0.1, gt=0)
    precompute_reference: bool = False


class SimpoArgs(_Strict):
    # SimPO paper defaults for small models: beta 2.0, gamma / beta 0.5.
    beta: float = Field(2.0, gt=0)
    gamma_beta_ratio: float = Field(0.5, ge=0.0)


class OrpoArgs(_Strict):
    # The weight of the odds-ratio term beside the SFT term on the preferred answers (ORPO's lambda).
    beta: float = Field(0.1, gt=0)


class RewardArgs(_Strict):
    pass


OBJECTIVE_ARGS: dict[str, type[_Strict]] = {
    "sft": SftArgs, "dpo": DpoArgs, "ipo": IpoArgs, "simpo": SimpoArgs, "orpo": OrpoArgs, "reward": RewardArgs,
}
Objective = Literal["sft", "dpo", "ipo", "simpo", "orpo", "reward"]
# Objectives that score the policy against a frozen reference model.
REFERENCE_OBJECTIVES = ("dpo", "ipo")
# The settings that only an objective with a reference model has.
REFERENCE_SETTINGS = ("precompute_reference",)
PREFERENCE_OBJECTIVES = ("dpo", "ipo", "simpo", "orpo", "reward")
# The LoRA family: a recipe of one of these may continue the adapter of a checkpoint:<recipe> base.
LORA_METHODS = ("lora", "rslora", "dora", "qlora")


def default_objective(task: str, base_model: str) -> str:
    """The objective of a recipe that names none: a reward model for an encoder on preference pairs (the
    packaged default is one), DPO for a causal LM on them, next-token SFT for every other causal task."""
    if task == "preference":
        return "reward" if base_model == "default" else "dpo"
    return "sft"


# min_interval: a number and a unit (seconds, minutes, hours, days): 90s, 15m, 1h, 2d.
INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RetrainConfig(_Strict):
    """When a changed dataset (or base checkpoint) retrains the recipe by itself, through Dagster's
    declarative automation: only after the dataset's blocking checks passed, one run at a time, and
    at most once per `min_interval` or once per tick of `cron`."""

    # At most one training request per interval: a recipe never trained trains as soon as its data is
    # ready; a retraining waits until this long after the last request.
    min_interval: str | None = "1h"
    # Instead of min_interval, any cron expression: training only at these times, once per tick.
    cron: str | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> RetrainConfig:
        if self.cron is not None:
            fields = self.cron.split()
            if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,\-]+", f) for f in fields):
                raise ValueError(f"cron {self.cron!r} is not a 5-field cron expression (minute hour day month weekday)")
            object.__setattr__(self, "min_interval", None)
        elif not re.fullmatch(r"[1-9][0-9]*[smhd]", str(self.min_interval)):
            raise ValueError(f"min_interval {self.min_interval!r}: a whole number and a unit (s, m, h or d), "
                             "such as 30m, 1h or 1d; or a cron")
        return self

    @property
    def min_interval_seconds(self) -> int | None:
        if self.min_interval is None:
            return None
        return int(self.min_interval[:-1]) * INTERVAL_UNITS[self.min_interval[-1]]


def _validated_args(model: type[_Strict], values: dict, field: str, owner: str) -> _Strict:
    """A method's or objective's arguments, validated; an error names `field`.key, not the bare key.

    Raises:
        ValueError: every problem, e.g. "objective_args.bta: Extra inputs are not permitted (dpo takes beta, ...)".
    """
    try:
        return model.model_validate(values)
    except ValidationError as e:
        known = ", ".join(model.model_fields) or "none"
        raise ValueError("; ".join(f"{field}.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                                   + (f" ({owner} takes: {known})" if err["type"] == "extra_forbidden" else "")
                                   for err in e.errors())) from None


# base_model forms besides a local directory or hub id.
SCRATCH = "scratch"
CHECKPOINT_PREFIX = "checkpoint:"


class RecipeConfig(_Strict):
    name: Name
    dataset: Name
    # "default": the packaged all-MiniLM-L6-v2 encoder; "scratch": a new causal LM (see `scratch`);
    # "checkpoint:<recipe>": the latest checkpoint of another recipe; s3://bucket/prefix/; a local
    # save_pretrained directory; or a hub id.
    base_model: str = "default"
    scratch: ScratchModelConfig | None = None
    generation: GenerationConfig = GenerationConfig()
    forgetting: ForgettingConfig | None = None
    gates: GatesConfig = GatesConfig()
    # `manual`: never retrained by automation; the checkpoint is rebuilt only when you materialize it.
    retrain: RetrainConfig | Literal["manual"] = RetrainConfig()
    method: Method
    method_args: dict[str, Any] = Field(default_factory=dict)
    # What training minimises: sft (next-token loss on the answers), dpo, ipo, simpo or orpo (causal LMs
    # on preference pairs), reward (an encoder scoring (prompt, answer), Bradley-Terry loss on the pair).
    # None: default_objective for the dataset's task and the base.
    objective: Objective | None = None
    objective_args: dict[str, Any] = Field(default_factory=dict)
    training: TrainingConfig = TrainingConfig()
    # `merged`: also write the adapter folded into the base weights (merge_and_unload) under merged/.
    export: Literal["adapter", "merged"] = "adapter"
    # Loading the base model: pickle weights (.bin, .pt) and a repository's own Python code can run
    # anything when loaded, so both are refused unless the recipe says it trusts them.
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _method_args(self) -> RecipeConfig:
        if (self.base_model == SCRATCH) != (self.scratch is not None):
            raise ValueError("base_model: scratch and a scratch: block go together")
        args = _validated_args(METHOD_ARGS[self.method], self.method_args, "method_args", self.method)
        # Store the resolved arguments so the recipe hash covers the defaults too.
        object.__setattr__(self, "method_args", args.model_dump())
        if self.objective is None and self.objective_args:
            raise ValueError("objective_args needs an objective: name it (objective: dpo, ...)")
        if self.objective is not None:
            reference = [k for k in REFERENCE_SETTINGS if k in self.objective_args]
            if reference and self.objective not in REFERENCE_OBJECTIVES:
                raise ValueError(f"objective_args.{reference[0]}: {self.objective} is reference-free (it scores the "
                                 f"policy alone); only {' and '.join(REFERENCE_OBJECTIVES)} have a reference model")
            objective_args = _validated_args(OBJECTIVE_ARGS[self.objective], self.objective_args, "objective_args",
                                             self.objective)
            object.__setattr__(self, "objective_args", objective_args.model_dump())
        lr = self.training.learning_rate or DEFAULT_LEARNING_RATE[self.method]
        if isinstance(lr, LearningRateSearch):
            # The grid written out, so the recipe hash covers it; the head's rate is each candidate's own.
            rates = LEARNING_RATE_GRID[self.method] if lr.search == "auto" else lr.search
            training = self.training.model_copy(update={"learning_rate": LearningRateSearch(search=rates)})
        else:
            head_lr = self.training.head_learning_rate or DEFAULT_HEAD_LEARNING_RATE.get(self.method, lr)
            training = self.training.model_copy(update={"learning_rate": lr, "head_learning_rate": head_lr})
        object.__setattr__(self, "training", training)
        return self

    @property
    def learning_rate_candidates(self) -> list[float] | None:
        """The rates a `learning_rate: {search: ...}` recipe tries, smallest first; None for one rate."""
        lr = self.training.learning_rate
        return list(lr.search) if isinstance(lr, LearningRateSearch) else None

    def with_learning_rate(self, rate: float) -> RecipeConfig:
        """The recipe one candidate of its search trains: the same settings at `rate`."""
        training = {**self.training.model_dump(mode="json"), "learning_rate": rate}
        return RecipeConfig.model_validate({**self.model_dump(mode="json"), "training": training})

    def objective_for(self, task: str) -> tuple[str, dict[str, Any]]:
        """(objective, its resolved arguments) on a dataset of `task`: the recipe's, or default_objective."""
        if self.objective is not None:
            return self.objective, self.objective_args
        objective = default_objective(task, self.base_model)
        return objective, OBJECTIVE_ARGS[objective]().model_dump()

    @property
    def learning_rate(self) -> float:
        """The training learning rate, with the method's default filled in at validation."""
        if self.learning_rate_candidates is not None:
            raise ValueError(f"recipe {self.name} searches its learning rate: each candidate is "
                             "with_learning_rate(rate)")
        return self.training.learning_rate  # type: ignore[return-value]

    def recipe_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))

    @property
    def loading(self) -> dict[str, bool]:
        """The base model loading policy, as load_classifier / load_causal_lm take it."""
        return {"allow_pickle": self.allow_pickle, "trust_remote_code": self.trust_remote_code}

    @property
    def base_recipe(self) -> str | None:
        """The recipe whose checkpoint this one starts from, for base_model: checkpoint:<recipe>."""
        return self.base_model.removeprefix(CHECKPOINT_PREFIX) if self.base_model.startswith(CHECKPOINT_PREFIX) else None


class AutomationConfig(_Strict):
    """How often the daemon looks: landing locations for new files, and automation conditions."""

    # false: the landing and automation sensors start stopped (start them in the UI's Automation tab).
    # It sets their default only: once started or stopped in the UI, the instance remembers that.
    enabled: bool = True
    landing_interval_seconds: int = Field(30, ge=1)
    evaluation_interval_seconds: int = Field(30, ge=1)


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class GpuConfig(_Strict):
    """The `gpu` resource's defaults for every run, sensor-started ones included (the launchpad can
    still override them per run)."""

    device: Device = "auto"  # auto: CUDA when torch sees it
    precision: Precision = "auto"  # auto: bf16 on CUDA when supported
    # Training processes, one per GPU: above 1, torchrun with DDP (a pod asks for as many GPUs).
    processes: int = Field(1, ge=1)


class Toleration(_Strict):
    """A Kubernetes toleration, written as in a pod's YAML (tolerationSeconds in camelCase).

    Typed rather than a free dict so that a misspelt key fails when the config loads, not when the
    pod is created after the splits were exported.
    """

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    # None: every effect.
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    # NoExecute only: how long the pod stays on a node after the taint appears (None: forever).
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds", ge=0)

    @model_validator(mode="after")
    def _as_kubernetes_accepts(self) -> Toleration:
        # The API server's own rules, checked before a run exports anything.
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key matches every taint only with operator: Exists")
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("operator: Exists matches any value; drop value")
        return self


class KubernetesConfig(_Strict):
    """With FT_ENV=k8s: the pod each checkpoint asset runs its training command in (PipesK8sClient).

    The pod cannot read the Dagster machine's disk: storage.root must be s3://.
    """

    # ft_assets with a CUDA build of torch; the code location's image works if its torch is one.
    # No default: a wrong image fails late, on a GPU node.
    image: str = Field(min_length=1)
    # None: the namespace the run's own pod is in (where the Dagster chart's Role lets its service
    # account create pods), else the kubeconfig context's, else "default".
    namespace: str | None = None
    # Labels a node must carry, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}.
    node_selector: dict[str, str] = {}
    # GPU nodes are usually tainted to keep other pods off them; the training pod tolerates these.
    tolerations: list[Toleration] = []
    # Kubernetes fails the pod (and frees its GPUs) after this long running (activeDeadlineSeconds).
    timeout_seconds: int = Field(86400, gt=0)
    # None: the namespace's default service account; the training pod needs no Kubernetes API access.
    service_account_name: str | None = None
    # Secrets whose keys become the pod's environment (envFrom), e.g. AWS_ACCESS_KEY_ID,
    # AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL for the s3:// storage root.
    env_from_secrets: list[str] = []
    # With a fixed tag, IfNotPresent reuses the node's copy of a multi-GB CUDA image.
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class ProjectConfig(_Strict):
    storage: StorageConfig = StorageConfig()
    automation: AutomationConfig = AutomationConfig()
    gpu: GpuConfig = GpuConfig()
    # Only read by the kubernetes launcher (FT_ENV=k8s); see KubernetesConfig.
    kubernetes: KubernetesConfig | None = None
    corpora: list[CorpusConfig]
    datasets: list[DatasetConfig]
    recipes: list[RecipeConfig] = []

    # Set by load_config, not by the YAML: where the file lives, for resolving relative paths.
    _source: Path = PrivateAttr(DEFAULT_CONFIG_PATH)
    # Set when the project shares its code location with others (the FineTuningProject component):
    # its name, put in front of every asset key, sensor and resource name it defines.
    _name_prefix: str | None = PrivateAttr(None)

    @property
    def source(self) -> Path:
        return self._source

    @property
    def name_prefix(self) -> str | None:
        return self._name_prefix

    def key_path(self, *parts: str) -> list[str]:
        """An asset key's path: `parts`, after the project's name when it shares its code location."""
        return [self._name_prefix, *parts] if self._name_prefix else list(parts)

    def qualified_name(self, name: str) -> str:
        """A sensor's or resource's name, after the project's name when it shares its code location."""
        return f"{self._name_prefix}__{name}" if self._name_prefix else name

    def corpus(self, name: str) -> CorpusConfig:
        return next(c for c in self.corpora if c.name == name)

    def dataset(self, name: str) -> DatasetConfig:
        return next(d for d in self.datasets if d.name == name)

    def dataset_corpora(self, dataset: DatasetConfig) -> list[CorpusConfig]:
        names = [dataset.corpus] + ([dataset.test_corpus] if dataset.test_corpus else [])
        return [self.corpus(n) for n in names]

    @property
    def root(self) -> Path:
        """The local storage root: the storage root against the config file's folder; with an s3://
        root, storage.local (where everything is written before it is published)."""
        root = self.storage_root
        return (self.source.parent / (self.storage.local if root.startswith("s3://") else root)).resolve()

    @property
    def remote_root(self) -> str | None:
        """The s3:// storage root, or None when the root is a local folder."""
        return self.storage_root.rstrip("/") if self.storage_root.startswith("s3://") else None

    @property
    def storage_root(self) -> str:
        """FT_ASSETS_ROOT, else storage.root, as written: a folder or an s3:// URI."""
        return os.environ.get("FT_ASSETS_ROOT") or self.storage.root

    def remote_uri(self, local_path: Path) -> str | None:
        """Where a path under the local root is published (None for a local root)."""
        if self.remote_root is None:
            return None
        return f"{self.remote_root}/{local_path.relative_to(self.root).as_posix()}"

    def corpus_location(self, corpus: CorpusConfig) -> str:
        """Where the corpus lands: an s3:// URI as written, else a local path against the storage root."""
        if corpus.path.startswith("s3://"):
            return corpus.path
        return str((self.root / corpus.path).resolve())

    @property
    def warehouse_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    def dataset_hash(self, dataset: DatasetConfig) -> str:
        return stable_hash(
            {"dataset": dataset.model_dump(mode="json"),
             "corpora": [c.model_dump(mode="json") for c in self.dataset_corpora(dataset)]}
        )


def stable_hash(payload: Any) -> str:
    """sha256 of canonical JSON: the same settings give the same hash in every process."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_config(path: str | Path | None = None) -> ProjectConfig:
    """Reads and validates a project YAML, or the `attributes` of a FineTuningProject's defs.yaml.

    Args:
        path: the YAML file; None reads FT_ASSETS_CONFIG, else the packaged default.

    Returns:
        The validated ProjectConfig, with `source` set to the file's absolute path.

    Raises:
        ConfigError: naming the file, and for each problem the entry and field.
    """
    path = Path(path or os.environ.get("FT_ASSETS_CONFIG") or DEFAULT_CONFIG_PATH).resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if isinstance(raw, dict) and raw.get("type") in COMPONENT_TYPES:
        raw = raw.get("attributes")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with corpora, datasets and recipes at the top")
    values = expanded_size(raw)
    if values > MAX_CONFIG_VALUES:
        raise ConfigError(f"{path}: the YAML expands to {values:,} values (its aliases repeat anchors within "
                          f"anchors); a project has at most {MAX_CONFIG_VALUES:,}")
    try:
        config = ProjectConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe_errors(path, raw, e)) from e
    return checked_project(config, path)


def checked_project(config: ProjectConfig, path: Path, name_prefix: str | None = None) -> ProjectConfig:
    """A schema-valid project, placed at `path` (relative paths resolve from its folder) and checked across
    entries (names, references, methods).

    Raises:
        ConfigError: naming the file, and for each problem the entry and field.
    """
    config._source = path
    config._name_prefix = name_prefix
    problems = _cross_reference_problems(config)
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return config


# YAML aliases share one object per anchor, so a few hundred bytes can stand for billions of values
# once expanded (validation and error messages walk the expansion). Real projects have a few thousand.
MAX_CONFIG_VALUES = 100_000
# The most of a wrong value an error message quotes.
MAX_QUOTED_CHARS = 200


def expanded_size(value, _sizes: dict | None = None) -> int:
    """How many values `value` holds with every alias expanded, counted once per shared object."""
    sizes = {} if _sizes is None else _sizes
    if id(value) in sizes:
        return sizes[id(value)]
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    sizes[id(value)] = 1 + sum(expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def _quoted(value) -> str:
    text = repr(value)  # the whole file is within MAX_CONFIG_VALUES by now
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + f"... ({len(text):,} chars)"


def _describe_errors(path: Path, raw: dict, error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = [p for p in err["loc"] if p not in _UNION_TAGS]
        where = ".".join(str(p) for p in loc)
        # Name list entries by their `name`, e.g. "recipes[1] (tickets_lora)".
        if len(loc) >= 2 and isinstance(loc[1], int) and isinstance(raw.get(loc[0]), list):
            entry = raw[loc[0]][loc[1]]
            label = f"{loc[0]}[{loc[1]}]"
            if isinstance(entry, dict) and "name" in entry:
                label += f" ({entry['name']})"
            field = ".".join(str(p) for p in loc[2:]) or "(entry)"
            where = f"{label}: field {field}"
        quote = err["type"] != "missing" and not isinstance(err["input"], dict)
        value = f" (got {_quoted(err['input'])})" if quote else ""
        lines.append(f"  - {where}: {err['msg']}{value}")
    return f"{path}: {len(lines)} problem(s):\n" + "\n".join(lines)


def _cross_reference_problems(config: ProjectConfig) -> list[str]:
    problems = []
    for kind, entries in (("corpora", config.corpora), ("datasets", config.datasets), ("recipes", config.recipes)):
        names = [e.name for e in entries]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{kind}: name {dup!r} is used more than once")
    corpora = {c.name: c for c in config.corpora}
    datasets = {d.name for d in config.datasets}
    recipes = {r.name: r for r in config.recipes}
    for i, d in enumerate(config.datasets):
        for field in ("corpus", "test_corpus"):
            ref = getattr(d, field)
            if ref is None:
                continue
            if ref not in corpora:
                problems.append(f"datasets[{i}] ({d.name}): field {field}: no corpus named {ref!r}")
                continue
            problem = _corpus_task_problem(corpora[ref], d.task)
            if problem:
                problems.append(f"datasets[{i}] ({d.name}): field {field}: corpus {ref!r} {problem}")
        if d.test_corpus is not None and d.test_corpus == d.corpus:
            problems.append(f"datasets[{i}] ({d.name}): field test_corpus: must differ from corpus")
        if d.learning_curve is not None:
            for name in d.learning_curve.recipes:
                if name not in recipes:
                    problems.append(f"datasets[{i}] ({d.name}): field learning_curve.recipes: no recipe named {name!r}")
                elif recipes[name].dataset != d.name:
                    problems.append(f"datasets[{i}] ({d.name}): field learning_curve.recipes: recipe {name!r} trains "
                                    f"on datasets/{recipes[name].dataset}, not on {d.name}")
                elif recipes[name].learning_rate_candidates is not None:
                    problems.append(f"datasets[{i}] ({d.name}): field learning_curve.recipes: recipe {name!r} "
                                    "searches its learning rate; a curve compares fixed settings across data sizes: "
                                    "give it the rate its search chose (reports/<recipe> names it)")
        metrics = TASK_METRICS[d.task][1]
        if d.champion.metric is not None and d.champion.metric not in metrics:
            problems.append(f"datasets[{i}] ({d.name}): field champion.metric: {d.champion.metric!r} is not a "
                            f"{d.task} metric (one of: {', '.join(metrics)})")
    _fill_chain_objectives(config, recipes)
    for i, r in enumerate(config.recipes):
        where = f"recipes[{i}] ({r.name})"
        if r.name in ("leaderboard", "learning_curve"):
            problems.append(f"{where}: field name: {r.name!r} is taken by reports/{r.name}/")
        if r.dataset not in datasets:
            problems.append(f"{where}: field dataset: no dataset named {r.dataset!r}")
            continue
        problems += [f"{where}: field base_model: {p}"
                     for p in _base_recipe_problems(r, recipes, continues_adapter=continues_adapter(r, config.dataset(r.dataset).task))]
        kind = _base_kind_problem(r, config, recipes)
        if kind:
            problems.append(f"{where}: field base_model: {kind}")
        elif r.forgetting is not None:
            problems += [f"{where}: field forgetting.corpus: {p}" for p in _forgetting_problems(r, config, recipes)]
        elif r.gates.max_forgetting is not None:
            problems.append(f"{where}: field gates.max_forgetting: the recipe measures no forgetting; add "
                            "`forgetting: {}` (the base's held-out text, for a checkpoint: base) or "
                            "`forgetting: {corpus: <general text corpus>}`, or drop the ceiling")
        problems += [f"{where}: field {field}: {p}" for field, p in _method_problems(r, config.dataset(r.dataset))]
    return problems


def _fill_chain_objectives(config: ProjectConfig, recipes: dict[str, RecipeConfig]) -> None:
    """A preference recipe that names no objective, on a checkpoint:<recipe> base that is an encoder (a reward
    model, a classifier), trains a reward model, as one on the packaged encoder does: the default follows
    the chain, filled in here, so the recipe hash covers it."""
    datasets = {d.name: d for d in config.datasets}

    def fill(recipe: RecipeConfig, seen: tuple[str, ...]) -> None:
        base = recipes.get(recipe.base_recipe or "")
        if base is None or base.name in seen or base.dataset not in datasets or recipe.dataset not in datasets:
            return  # no chain, or one reported as a problem of its own
        fill(base, seen + (base.name,))
        if (recipe.objective is None and datasets[recipe.dataset].task == "preference"
                and not trains_causal_lm(base, datasets[base.dataset].task)):
            object.__setattr__(recipe, "objective", "reward")
            object.__setattr__(recipe, "objective_args", OBJECTIVE_ARGS["reward"]().model_dump())

    for recipe in config.recipes:
        fill(recipe, (recipe.name,))


def _kind(recipe: RecipeConfig, task: str) -> str:
    if not trains_causal_lm(recipe, task):
        return "an encoder (a reward model)" if task == "preference" else "an encoder (a classifier)"
    return "a causal LM"


def _base_kind_problem(recipe: RecipeConfig, config: ProjectConfig, recipes: dict[str, RecipeConfig]) -> str | None:
    """A checkpoint:<recipe> base must be the kind of model the recipe trains: a causal LM continues a causal
    LM, an encoder (a classifier, a reward model) an encoder."""
    base = recipes.get(recipe.base_recipe or "")
    if base is None or base.dataset not in {d.name for d in config.datasets}:
        return None  # reported on base_model, or on the base recipe's dataset field
    task, base_task = config.dataset(recipe.dataset).task, config.dataset(base.dataset).task
    if trains_causal_lm(recipe, task) == trains_causal_lm(base, base_task):
        return None
    return (f"recipe {base.name!r} trains {_kind(base, base_task)} on datasets/{base.dataset}, and this {task} "
            f"recipe trains {_kind(recipe, task)}: start it from a checkpoint of the same kind")


def _forgetting_problems(recipe: RecipeConfig, config: ProjectConfig, recipes: dict[str, RecipeConfig]) -> list[str]:
    """forgetting.corpus names a plain-text corpus; without one, the base must be a checkpoint:<recipe>
    whose dataset's test split holds texts (a base of the same kind is checked by _base_kind_problem), not
    preference pairs."""
    name = recipe.forgetting.corpus
    if name is not None:
        corpus = next((c for c in config.corpora if c.name == name), None)
        if corpus is None:
            return [f"no corpus named {name!r}"]
        if corpus.record != "text":
            return [f"corpus {name!r} holds {corpus.record} records; forgetting is measured on plain text"]
        return []
    if recipe.base_recipe is None:
        return [f"not set, and base_model {recipe.base_model!r} is not a checkpoint:<recipe>, so there is no base "
                "dataset whose held-out text it knows; name a general text corpus the base knows "
                "(`forgetting: {corpus: <name>}`)"]
    base = recipes.get(recipe.base_recipe)
    if base is None or base.dataset not in {d.name for d in config.datasets}:
        return []  # reported on the base_model field, or on the base recipe's dataset field
    if config.dataset(base.dataset).task == "preference":
        return [f"not set, so forgetting would be measured on the test split of datasets/{base.dataset} (the "
                f"dataset of base recipe {base.name!r}), a preference dataset: pairs, not a text the model is "
                "scored on; name a general text corpus (`forgetting: {corpus: <name>}`)"]
    return []


def _corpus_task_problem(corpus: CorpusConfig, task: str) -> str | None:
    if task == "preference":
        if corpus.record != "preference":
            return f"holds {corpus.record} records; a preference dataset needs `record: preference`"
        return None
    if corpus.record == "preference":
        return "holds preference records; " + {
            "classification": "a classification dataset reads text records with a label_field",
            "instruction": "an instruction dataset needs `record: instruction`",
            "language_modeling": "a language_modeling dataset reads text records",
        }[task]
    if task == "classification" and (corpus.record != "text" or corpus.label_field is None):
        return "has no label_field, which a classification dataset needs"
    if task == "instruction" and corpus.record != "instruction":
        return "holds text records; an instruction dataset needs `record: instruction`"
    if task == "language_modeling" and corpus.record != "text":
        return "holds instruction records; a language_modeling dataset reads text records"
    return None


def continues_adapter(recipe: RecipeConfig, task: str) -> bool:
    """Whether a recipe may start from the adapter a checkpoint:<recipe> base leaves (SFT with LoRA, then DPO
    on that adapter): a preference recipe that trains a causal LM with a LoRA-family method."""
    return task == "preference" and trains_causal_lm(recipe, task) and recipe.method in LORA_METHODS


def _base_recipe_problems(recipe: RecipeConfig, recipes: dict[str, RecipeConfig], *,
                          continues_adapter: bool = False) -> list[str]:
    """checkpoint:<recipe> must name another recipe that leaves a plain model directory (or, for a recipe that
    continues_adapter, an adapter of the same method and settings), without a cycle."""
    seen, current = [recipe.name], recipe
    while current.base_recipe is not None:
        base = recipes.get(current.base_recipe)
        if base is None:
            return [f"no recipe named {current.base_recipe!r}"]
        if base.name in seen:
            return [f"checkpoint chain {' -> '.join(seen + [base.name])} is a cycle"]
        if current is recipe and base.method != "full" and base.export != "merged":
            same = base.method == recipe.method and base.method_args == recipe.method_args
            if continues_adapter and not same:
                return [f"recipe {base.name!r} leaves a {base.method} adapter, which this recipe continues: give it "
                        f"method {base.method} and the same method_args ({base.method_args}), or give "
                        f"{base.name!r} `export: merged` to start from the merged model"]
            if not continues_adapter:
                return [f"recipe {base.name!r} ({base.method}) leaves an adapter, not a model to start from; "
                        "give it `export: merged` or use a full recipe"]
        seen.append(base.name)
        current = base
    return []


CAUSAL_TASKS = ("instruction", "language_modeling")


def trains_causal_lm(recipe: RecipeConfig, task: str) -> bool:
    """Whether the recipe trains a causal LM: every instruction and language-modelling recipe, and a
    preference recipe of any objective but `reward` (which trains an encoder with a scalar head)."""
    return task in CAUSAL_TASKS or (task == "preference" and recipe.objective_for(task)[0] != "reward")

# Per task: the headline metric (the default ranking) and every metric a report carries at its top level.
TASK_METRICS = {
    "classification": ("accuracy", ("accuracy", "macro_f1")),
    "instruction": ("rouge_l", ("rouge_l", "exact_match", "perplexity")),
    "language_modeling": ("perplexity", ("perplexity", "eval_loss")),
    "preference": ("preference_accuracy", ("preference_accuracy", "reward_margin")),
}
# Every other metric is better higher.
LOWER_IS_BETTER = {"perplexity", "eval_loss"}


def _method_problems(recipe: RecipeConfig, dataset: DatasetConfig) -> list[tuple[str, str]]:
    """(field, problem) for method/model/task combinations that cannot run on any machine, found when the
    YAML loads: from the settings alone, with no file read and nothing asked of the machine (a Dagster
    webserver need not have the training GPU). What depends on the machine or the base model's files is
    checked when training starts (lib/training/loop.py require_machine)."""
    problems = []
    task = dataset.task
    causal = trains_causal_lm(recipe, task)
    objective = recipe.objective_for(task)[0]
    cfg = recipe.training
    if dataset.validation_fraction == 0:
        problems += [(f"training.{field}", f"needs a validation split, and datasets/{dataset.name} has "
                                           "validation_fraction 0") for field in cfg.settings_needing_validation()]
    elif cfg.keep_last and cfg.keep == "last":
        problems.append(("training.keep_last", "keeps the last weights beside the best ones; with keep: last "
                                               "the checkpoint is the last: drop keep_last"))
    if causal and recipe.base_model == "default":
        what = f"objective {objective}" if task == "preference" else f"a {task} recipe"
        problems.append(("base_model", f"the packaged default is an encoder (all-MiniLM-L6-v2); {what} needs a "
                                       "causal LM: checkpoint:<recipe>, s3://..., a local directory or a hub id"
                                       + (" (or objective: reward, a reward model on the encoder)"
                                          if task == "preference" else "")))
    if task == "preference" and recipe.base_model == SCRATCH:
        problems.append(("base_model", "preference tuning starts from a model that can already answer: pretrain "
                                       "(and instruction-tune) one first, then base_model: checkpoint:<recipe>"))
    elif not causal and recipe.base_model == SCRATCH:
        problems.append(("base_model", "scratch builds a causal LM; classification starts from a pretrained encoder"))
    if recipe.objective is not None:
        if task == "classification":
            problems.append(("objective", f"{recipe.objective} is not for a classification dataset, which trains "
                                          "with cross-entropy on its labels; drop objective"))
        elif task in CAUSAL_TASKS and recipe.objective != "sft":
            problems.append(("objective", f"{recipe.objective} learns from preference pairs (a task: preference "
                                          f"dataset); dataset {dataset.name!r} is {task}: use sft or drop objective"))
        elif task == "preference" and recipe.objective == "sft":
            problems.append(("objective", "sft learns one answer per prompt; on preference pairs use dpo, ipo, "
                                          "simpo, orpo (a causal LM) or reward (an encoder)"))
    if objective == "reward" and recipe.method == "prefix_tuning":
        problems.append(("method", "prefix_tuning cannot tune a sequence classifier, which a reward model is; use "
                                   "prompt_tuning or lora"))
    if recipe.base_model == SCRATCH and recipe.method != "full":
        problems.append(("method", f"a model from scratch has nothing pretrained to keep; use method full, "
                                   f"not {recipe.method}"))
    if causal and recipe.method == "head_only":
        problems.append(("method", "head_only trains a classification head; a causal LM has none (its output "
                                   "layer is tied to the embeddings). Use freeze or an adapter method"))
    if recipe.training.packing and dataset.task != "instruction":
        problems.append(("training.packing", f"packing joins instruction conversations; a {dataset.task} "
                                             "dataset has none"))
    if recipe.training.packing and recipe.method in ("prompt_tuning", "prefix_tuning"):
        problems.append(("training.packing", f"{recipe.method} prepends virtual tokens, and PEFT then drops the "
                                             "position ids that keep packed conversations apart; turn packing off"))
    if recipe.training.imbalance != "none" and dataset.task != "classification":
        problems.append(("training.imbalance", "imbalance handling weighs classes; it is for classification"))
    if recipe.export == "merged" and recipe.method not in MERGEABLE_METHODS:
        problems.append(("export", f"merged folds adapter weights into the base; {recipe.method} has none to "
                                   f"fold (mergeable: {', '.join(MERGEABLE_METHODS)})"))
    if recipe.method == "prefix_tuning" and dataset.task == "classification":
        # PEFT prefix-tunes through the backbone's past_key_values, which transformers' sequence
        # classifiers (BERT, GPT-2, Llama) no longer take; ft_assets_tests checks this still holds.
        problems.append(("method", "prefix_tuning cannot tune a sequence classifier (PEFT needs past_key_values "
                                   "the model does not take); use prompt_tuning, which prepends a soft prompt"))
    return problems
