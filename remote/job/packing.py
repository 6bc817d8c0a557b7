"""Packed attention: which kernel runs, how a packed micro batch reaches it, and what it costs.

TRL packs the tokenized examples best-fit-decreasing ("bfd") into rows of at most `max_seq_length` tokens,
several documents per row, and records each row's document lengths (`seq_lengths`). How a micro batch of B
such rows reaches attention is the whole difference between paying per document and paying for the
flattened micro batch:

- `varlen` (flash_attention_2: flash_attn imports and a CUDA GPU is present): TRL's padding-free collator
  flattens the micro batch into one row and computes the documents' boundaries on the CPU as
  `cu_seq_lens_q/k` and `max_length_q/k`; transformers passes them to `flash_attn_varlen_func`. Work: the sum
  over documents of len^2. Nothing is masked, nothing is synchronised.
- `rows` (every other kernel: sdpa, eager): the B rows stay B rows. `PackedRowsCollator` sends each token's
  position (restarting at every document) and its document id; `block_causal_mask` turns the ids into a
  (B, 1, L, L) block-diagonal causal mask on the device (no host round trip). Work: at most B x L^2, bounded
  by rows of `max_seq_length`.

What is never done: padding-free rows with a dense kernel. TRL's padding-free collator feeds sdpa ONE row of
B x L tokens, and transformers then builds a (B*L)^2 mask and sdpa computes all of it: with B = 4 rows of
4096 that is 4x the attention work of the rows path and a 16k x 16k mask per step (issue 13: 10k tokens/s
on an H200 where a hand-written loop over rows made 31k; micro batch 8 ran out of memory at 146 GB).

Each batch also carries `TOKENS_KEY` (its real, non-padding token count, a plain int known on the CPU), which
the trainer pops before the model sees the batch: the job counts tokens without a device round trip per step.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TOKENS_KEY = "tunedeck_num_tokens"  # real tokens of a micro batch (int), popped before the forward
DOCUMENT_IDS_KEY = "tunedeck_document_ids"  # (B, L) document index of each token, popped into the mask

VARLEN = "varlen"
ROWS = "rows"
PADDED = "padded"

PATH_BEHAVIOUR = {
    VARLEN: "padding-free bfd packing: the micro batch is one flat row; document boundaries reach "
            "FlashAttention-2's varlen kernel as cu_seq_lens (computed on the CPU by the collator): work per "
            "document, no attention across documents",
    ROWS: "bfd packing into rows of max_seq_length, several documents per row; a block-diagonal causal mask "
          "per row, built on the device from per-token document ids: work bounded by rows of max_seq_length "
          "(micro batch x max_seq_length^2), no attention across documents",
    PADDED: "no packing: each micro batch padded to its longest example, padding masked",
}


@dataclass(frozen=True)
class AttentionChoice:
    """The kernel transformers runs, how packed batches reach it, and why (the `attention` event)."""

    implementation: str  # flash_attention_2 | sdpa | eager
    path: str  # varlen | rows | padded
    reason: str

    @property
    def behaviour(self) -> str:
        return PATH_BEHAVIOUR[self.path]


def flash_attn_importable() -> tuple[bool, str]:
    """(flash_attn importable, why not): the import itself, since a wheel built for another torch/CUDA
    is found by find_spec and then fails to load."""
    if importlib.util.find_spec("flash_attn") is None:
        return False, "the flash-attn package is not installed"
    try:
        importlib.import_module("flash_attn")
    except (ImportError, OSError, RuntimeError) as exc:  # a wheel for another torch/CUDA fails at load
        return False, f"flash_attn does not import ({type(exc).__name__}: {exc})"
    return True, ""


def choose_attention(requested: str, fallback: str, packing: bool, cuda: bool,
                     flash_available: Callable[[], tuple[bool, str]] = flash_attn_importable) -> AttentionChoice:
    """The kernel and packed path for this machine, with the reason recorded in the `attention` event."""
    if requested == "flash_attention_2":
        if not cuda:
            impl, why = fallback, f"flash_attention_2 requested, no CUDA GPU -> {fallback}"
        else:
            ok, problem = flash_available()
            impl = requested if ok else fallback
            why = ("flash_attention_2 requested, flash_attn imports and a CUDA GPU is present" if ok
                   else f"flash_attention_2 requested, {problem} -> {fallback}")
    else:
        impl, why = requested, f"{requested} requested"
    if not packing:
        return AttentionChoice(impl, PADDED, why)
    if impl == "flash_attention_2":
        return AttentionChoice(impl, VARLEN, why + "; packed documents reach the varlen kernel as cu_seq_lens")
    return AttentionChoice(impl, ROWS, why + f"; {impl} has no varlen kernel, so packed rows of max_seq_length "
                                             "keep a block-diagonal mask each (never one flattened micro batch)")


@dataclass
class PackedRowsCollator:
    """Packed rows -> a (B, L) batch for a dense kernel: positions restart at every document, each token
    carries its document id (the trainer builds the block-diagonal mask from them on the device).

    The tail of a row that is not full is padding: its own document (it attends only to itself), never a
    label. The first token of every document is not a label either: it would be predicted from the previous
    document's last token. L is the longest row of the batch, rounded up to `pad_to_multiple_of`.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        position_ids = torch.empty((batch, width), dtype=torch.long)
        document_ids = torch.empty((batch, width), dtype=torch.int32)
        tokens = 0
        for row, example in enumerate(examples):
            ids = example["input_ids"]
            n = len(ids)
            lengths = list(example.get("seq_lengths") or [n])
            if sum(lengths) != n:
                raise ValueError(f"packed row {row}: seq_lengths {lengths} do not add up to its {n} tokens")
            if width > n:
                lengths.append(width - n)  # the padding: a document of its own
            input_ids[row, :n] = torch.as_tensor(ids)
            labels[row, :n] = torch.as_tensor(example.get("labels", ids))
            starts = torch.repeat_interleave(torch.cumsum(torch.tensor([0, *lengths[:-1]]), 0), torch.tensor(lengths))
            position_ids[row] = torch.arange(width) - starts
            document_ids[row] = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))
            tokens += n
        labels[position_ids == 0] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                DOCUMENT_IDS_KEY: document_ids, TOKENS_KEY: tokens}


@dataclass
class CountingCollator:
    """Wraps TRL's collator (varlen and padded paths): adds the batch's real token count, known on the CPU."""

    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.inner(examples))
        batch[TOKENS_KEY] = sum(len(e["input_ids"]) for e in examples)
        return batch


def block_causal_mask(document_ids: Any, implementation: str, dtype: Any) -> Any:
    """(B, 1, L, L) mask: query i sees key j when j <= i and both are in the same document.

    Boolean for sdpa; additive (0 / dtype min) for eager, whose kernel adds the mask to the scores.
    transformers takes a 4D mask as given (no packed-sequence detection, which costs a device sync).
    """
    import torch

    length = document_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    allowed = (document_ids[:, :, None] == document_ids[:, None, :]) & causal
    allowed = allowed[:, None]
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed
