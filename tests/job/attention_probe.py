"""Records every attention call of a training run: how many keys each query is computed against, and
whether any query may see a key of another document.

    TUNEDECK_ATTENTION_LOG=PREFIX python tests/job/attention_probe.py RUN_DIR   (one process per rank)

Runs the real job (`remote.job.train.run_main`) after wrapping, in transformers' registry, every attention
function a Llama model can dispatch to (sdpa, flash_attention_2, flex_attention, and the module's eager
one) and the Llama model's forward. Each call appends one JSON line to PREFIX.rankN.jsonl (see `analyse`).

Documents are taken from the model's input, not from the mask: a document starts where its position id
restarts at 0, and the model-input record checks that this is exactly where a BOS token stands (each example
is tokenized with a leading BOS), so a collator that packed documents without restarting positions shows up
too. Kept out of the job itself: the job runs unchanged, this file only wraps functions around it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"input": None, "sink": None}


def document_ids(position_ids: Any) -> Any:
    """(B, L) index of each token's document: a new one wherever the position restarts at 0."""
    return (position_ids == 0).long().cumsum(-1)


def analyse(kernel: str, query: Any, key: Any, attention_mask: Any, kwargs: dict[str, Any], position_ids: Any) -> dict[str, Any]:
    """One attention call: `keys_per_query` is the most keys the kernel computes any query against (a dense
    kernel: all of K, masked or not; varlen: the longest segment); `cross_document_pairs` counts (query, key)
    pairs the kernel lets through whose tokens belong to different documents."""
    import torch

    batch, queries, keys = query.shape[0], query.shape[2], key.shape[2]
    record: dict[str, Any] = {"kernel": kernel, "batch": batch, "queries": queries, "keys": keys}
    positions = position_ids.expand(batch, -1) if position_ids is not None else torch.arange(keys).expand(batch, -1)
    docs = document_ids(positions).to(query.device)
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:  # varlen: the kernel computes each segment alone
        segments = cu.diff()
        starts = (positions.reshape(-1) == 0).nonzero().flatten().tolist()
        record.update(path="varlen", keys_per_query=int(segments.max()),
                      max_length_q=kwargs.get("max_length_q"),
                      cross_document_pairs=0 if cu[:-1].tolist() == starts else -1,  # -1: boundaries disagree
                      segments=len(segments))
        return record
    causal = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril(keys - queries)
    if attention_mask is None:  # is_causal over the whole row
        allowed = causal.expand(batch, queries, keys)
    elif not hasattr(attention_mask, "dtype"):  # a flex BlockMask: dense view of what it lets through
        allowed = attention_mask.to_dense().bool().any(1)[:, :queries, :keys]
    else:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        allowed = mask.expand(batch, -1, queries, keys).any(1)
    same = docs[:, -queries:, None] == docs[:, None, :]
    record.update(path="dense", keys_per_query=keys, allowed_keys_max=int(allowed.sum(-1).max()),
                  cross_document_pairs=int((allowed & ~same).sum()))
    return record


def _write(record: dict[str, Any]) -> None:
    with _LOCK:
        if _STATE["sink"] is not None:
            _STATE["sink"](record)


def _wrap_attention(kernel: str, fn: Any) -> Any:
    def recorded(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
        positions = kwargs.get("position_ids")
        if positions is None and _STATE["input"] is not None:
            positions = _STATE["input"]
        _write(analyse(kernel, query, key, attention_mask, kwargs, positions))
        return fn(module, query, key, value, attention_mask, *args, **kwargs)

    return recorded


def install(sink: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    """Wrap the attention functions and the Llama model's forward, sending each record to `sink`; returns
    the function that puts the originals back."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama import modeling_llama

    mapping = ALL_ATTENTION_FUNCTIONS._global_mapping
    saved = {name: mapping[name] for name in ("sdpa", "flash_attention_2", "flex_attention") if name in mapping}
    saved_eager = modeling_llama.eager_attention_forward
    saved_forward = modeling_llama.LlamaModel.forward
    for name, fn in saved.items():
        mapping[name] = _wrap_attention(name, fn)
    modeling_llama.eager_attention_forward = _wrap_attention("eager", saved_eager)

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        _STATE["input"] = position_ids
        if input_ids is not None and position_ids is not None:
            bos, pad = self.config.bos_token_id, self.config.pad_token_id
            real = input_ids != pad
            starts_without_bos = int(((position_ids == 0) != (input_ids == bos))[real].sum())
            documents = int(((position_ids == 0) & real).sum(-1).max())
            _write({"kernel": "model_input", "rows": int(input_ids.shape[0]), "row_length": int(input_ids.shape[1]),
                    "tokens": int(real.sum()), "documents_max_per_row": documents,
                    "starts_without_bos": starts_without_bos})
        return saved_forward(self, input_ids, attention_mask, position_ids, *args, **kwargs)

    modeling_llama.LlamaModel.forward = forward
    _STATE["sink"] = sink

    def uninstall() -> None:
        mapping.update(saved)
        modeling_llama.eager_attention_forward = saved_eager
        modeling_llama.LlamaModel.forward = saved_forward
        _STATE["sink"] = None
        _STATE["input"] = None

    return uninstall


def read_log(prefix: str | os.PathLike[str]) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(prefix).parent.glob(Path(prefix).name + ".rank*.jsonl")):
        records.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return records


def main() -> None:
    path = f"{os.environ['TUNEDECK_ATTENTION_LOG']}.rank{os.environ.get('RANK', '0')}.jsonl"
    log = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- open for the life of the process

    def sink(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    install(sink)
    from remote.job.train import run_main

    sys.argv = ["remote.job.train", *sys.argv[1:]]
    run_main()


if __name__ == "__main__":
    main()
