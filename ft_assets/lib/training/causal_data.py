"""Causal-LM training examples: conversations with the loss on responses only, packing, text blocks.

An instruction row is a conversation (chat messages JSON, see ingest). It is rendered with the
tokenizer's chat template, or DEFAULT_CHAT_TEMPLATE when the tokenizer has none, and labelled so
that only assistant tokens carry a loss: the model learns to answer, not to write questions.
A language-modelling split is one stream of text cut into blocks of `max_length` tokens.
Labels use -100 for "no loss", as transformers and torch's cross_entropy do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

IGNORE = -100

# The template for tokenizers without one of their own (e.g. a model trained from scratch here):
#   <|user|>\n{content}\n<|assistant|>\n{content}<eos>
# The assistant turn ends with the end-of-sequence token, so generation knows where to stop.
# The newline after a user turn is an expression: transformers renders templates with trim_blocks,
# which would drop a literal newline right after {% else %}.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    """Gives the tokenizer DEFAULT_CHAT_TEMPLATE if it has no chat template; saved with it."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def ensure_pad_token(tokenizer) -> None:
    """Causal LMs often ship without a pad token; padding positions never carry a loss, so eos serves."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_and_reference(conversation: str) -> tuple[list[dict], str]:
    """The messages up to the last assistant turn (the prompt) and that turn's content (the reference)."""
    messages = json.loads(conversation)
    return messages[:-1], messages[-1]["content"]


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens
    truncated: bool


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int) -> TokenizedConversation:
    """Token ids and labels of one conversation, the loss on every assistant turn only.

    The assistant spans are found in characters: the render of the messages before turn i with
    the generation prompt must be a prefix of the render up to turn i (true of every common chat
    template), and the turn's tokens are those starting inside that span.

    Raises:
        ValueError: the chat template renders a prefix that the full conversation does not start with.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        if not text.startswith(prompt):
            raise ValueError("the chat template does not render a conversation's prompt as a prefix of the "
                             "conversation, so response tokens cannot be told apart; set a different template")
        spans.append((len(prompt), len(render(tokenizer, messages[: i + 1]))))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    labels = [
        token if any(start <= first < end for start, end in spans) else IGNORE
        for token, (first, _) in zip(input_ids, encoded["offset_mapping"])
    ]
    truncated = len(input_ids) > max_length
    return TokenizedConversation(input_ids[:max_length], labels[:max_length], truncated)


def tokenize_conversations(tokenizer, conversations: list[str], max_length: int) -> tuple[list[dict], dict]:
    """Examples ({"input_ids", "labels"}) of the conversations that keep at least one response token.

    Returns:
        (examples, counts) with counts {"conversations", "truncated", "dropped_no_response_tokens"}.
    """
    examples, truncated, dropped = [], 0, 0
    for conversation in conversations:
        tokenized = tokenize_conversation(tokenizer, json.loads(conversation), max_length)
        truncated += tokenized.truncated
        if all(label == IGNORE for label in tokenized.labels):
            dropped += 1  # the prompt alone fills max_length: nothing left to learn from
            continue
        examples.append({"input_ids": tokenized.input_ids, "labels": tokenized.labels})
    return examples, {"conversations": len(conversations), "truncated": truncated,
                      "dropped_no_response_tokens": dropped}


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Several examples per sequence of at most max_length tokens, in order, each with its own positions.

    position_ids restart at 0 for every example; transformers reads the restarts as sequence
    boundaries and masks attention across them (when no attention_mask is passed), so a packed
    example sees exactly what it would see alone. The first token of each example carries no
    loss, since it would be predicted from the previous example's last token.
    """
    packed, current = [], {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        n = len(example["input_ids"])
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            packed.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += example["input_ids"]
        current["labels"] += [IGNORE] + example["labels"][1:]
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        packed.append(current)
    return packed


def text_blocks(tokenizer, texts: list[str], block_size: int) -> list[dict]:
    """One stream of text (rows joined by newlines, in order) cut into blocks of block_size tokens.

    The remainder shorter than a block is dropped, as in transformers' run_clm; a stream shorter
    than one block becomes a single shorter block so small splits still count.
    """
    from datasets import Dataset

    stream = Dataset.from_dict({"text": ["\n".join(texts)]})
    ids = stream.map(lambda row: tokenizer(row["text"], add_special_tokens=False), remove_columns=["text"])[0]["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    usable = max(block_size, len(ids) // block_size * block_size) if ids else 0
    return [{"input_ids": ids[i:i + block_size], "labels": ids[i:i + block_size]}
            for i in range(0, min(usable, len(ids)), block_size)]


def collate_causal(batch: list[dict], pad_token_id: int, width: int | None = None) -> dict:
    """Right-padded tensors, to `width` or the longest row. Packed rows carry position_ids and no
    attention_mask (see pack_examples); unpacked rows get an attention_mask when the batch has padding."""
    import torch

    width = width or max(len(row["input_ids"]) for row in batch)
    out = {
        "input_ids": torch.tensor([row["input_ids"] + [pad_token_id] * (width - len(row["input_ids"])) for row in batch]),
        "labels": torch.tensor([row["labels"] + [IGNORE] * (width - len(row["labels"])) for row in batch]),
    }
    if "position_ids" in batch[0]:
        # Padding continues as a sequence of its own, so it never joins the last example.
        out["position_ids"] = torch.tensor([row["position_ids"] + list(range(width - len(row["position_ids"])))
                                            for row in batch])
    elif any(len(row["input_ids"]) < width for row in batch):
        # Only where something is padded: without a mask, full blocks keep SDPA's is_causal fast path.
        out["attention_mask"] = torch.tensor([[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"]))
                                              for row in batch])
    return out


def perplexity(loss: float) -> float:
    """exp(mean token loss), capped at exp(50) so an untrained model's figure stays a finite number."""
    import math

    return math.exp(min(loss, 50.0))


def causal_loss(logits, labels, *, reduction: str = "mean"):
    """Next-token cross-entropy over labelled positions: token t is predicted from positions < t.

    PEFT prompt tuning returns logits for its virtual tokens too, in front: they are cut off here.
    """
    import torch

    logits = logits[:, -labels.shape[1]:]
    # Shift the labels, not the logits: slicing (B, T, vocab) logits would copy them whole.
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction=reduction,
    )
