"""Packed attention, in one process on the CPU: the paths the job chooses compute what documents alone compute.

The job's own trainer (remote.job.train's PackedSFTTrainer, built by TRL on the tiny model, no DeepSpeed)
trains on TRL's best-fit-decreasing packed rows. The rows path (sdpa, a block-diagonal mask per row) and the
varlen path (FlashAttention-2's kwargs; here its registered function is replaced by a CPU stand-in that runs
each cu_seq_lens segment alone, since flash-attn needs CUDA) must give the loss of every document run on its
own. The attention probe of the CI run (tests/job/attention_probe.py) is shown to catch the two traps.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import datasets
import pytest
import torch

from core.presets import load_preset
from remote.job import demo_data, tiny_model
from remote.job.packing import (
    DOCUMENT_IDS_KEY,
    ROWS,
    TOKENS_KEY,
    VARLEN,
    AttentionChoice,
    PackedRowsCollator,
    block_causal_mask,
    choose_attention,
)
from remote.job.train import packed_trainer_class, to_prompt_completion
from tests.job import attention_probe

SEQ = 512  # several demo examples per packed row
ROWS_PER_BATCH = 4


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from trl import SFTConfig

    from remote.job.callbacks import TokenCounter

    cfg = load_preset("tiny-demo")
    rows = datasets.Dataset.from_list(demo_data.generate(48, 0, 0))
    formatted = to_prompt_completion(rows, cfg.data, None)
    out = tmp_path_factory.mktemp("packing")
    tokenizer = tiny_model.train_bpe_tokenizer([p + c for p, c in zip(formatted["prompt"], formatted["completion"], strict=True)],
                                               1024, out / "tokenizer")
    assert cfg.model.architecture is not None
    torch.manual_seed(0)
    model = tiny_model.build_random_model(cfg.model.architecture, tokenizer, "sdpa")
    args = SFTConfig(output_dir=str(out / "o"), per_device_train_batch_size=ROWS_PER_BATCH, max_length=SEQ,
                     packing=True, packing_strategy="bfd", bf16=False, gradient_checkpointing=False, use_cpu=True,
                     report_to="none", include_num_input_tokens_seen="no", logging_nan_inf_filter=False,
                     disable_tqdm=True)
    choice = AttentionChoice("sdpa", ROWS, "test")
    return packed_trainer_class()(model=model, args=args, train_dataset=to_prompt_completion(rows, cfg.data, tokenizer),
                                  processing_class=tokenizer, token_counter=TokenCounter(), attention=choice)


def packed_rows(trainer: Any) -> list[dict[str, Any]]:
    """A micro batch of TRL's packed rows: the three holding the most documents and the shortest one."""
    ds = trainer.train_dataset
    order = sorted(range(len(ds)), key=lambda i: (-len(ds[i]["seq_lengths"]), i))
    rows = [ds[i] for i in order[:ROWS_PER_BATCH - 1]] + [ds[min(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))]]
    assert sum(len(r["seq_lengths"]) > 1 for r in rows) >= 2, [r["seq_lengths"] for r in rows]
    return rows


def loss_of_documents_alone(model: Any, rows: list[dict[str, Any]]) -> float:
    """The mean loss over every labelled token, each document run through the model on its own."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            start = 0
            for n in row["seq_lengths"]:
                ids = torch.tensor(row["input_ids"][start:start + n])[None]
                labels = torch.tensor(row["labels"][start:start + n])[None]
                logits = model(input_ids=ids).logits[:, :-1].float()
                target = labels[:, 1:]
                keep = target != -100
                logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
                total -= float(logp[keep].sum())
                count += int(keep.sum())
                start += n
    return total / count


def test_rows_collator_restarts_positions_and_gives_each_document_its_own_block(trainer: Any) -> None:
    rows = packed_rows(trainer)
    batch = PackedRowsCollator(trainer.processing_class.pad_token_id)(rows)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(r["input_ids"]) for r in rows)
    assert batch[TOKENS_KEY] == sum(len(r["input_ids"]) for r in rows)
    mask = block_causal_mask(batch[DOCUMENT_IDS_KEY], "sdpa", torch.float32)
    assert mask.shape == (ROWS_PER_BATCH, 1, width, width) and mask.dtype == torch.bool
    for b, row in enumerate(rows):
        start = 0
        for n in row["seq_lengths"]:
            assert batch["position_ids"][b, start:start + n].tolist() == list(range(n))
            assert batch["labels"][b, start] == -100, "a document's first token is never predicted from the one before"
            block = mask[b, 0, start:start + n]
            assert block[:, start:start + n].equal(torch.ones(n, n, dtype=torch.bool).tril())
            assert not block[:, :start].any() and not block[:, start + n:].any()
            start += n
        assert (batch["labels"][b, start:] == -100).all() and (batch["input_ids"][b, start:] == trainer.processing_class.pad_token_id).all()
    eager = block_causal_mask(batch[DOCUMENT_IDS_KEY], "eager", torch.float32)
    assert eager.equal(torch.zeros_like(eager).masked_fill(~mask, torch.finfo(torch.float32).min))


def test_rows_path_loss_equals_the_documents_run_alone(trainer: Any) -> None:
    rows = packed_rows(trainer)
    batch = trainer.data_collator(rows)
    assert DOCUMENT_IDS_KEY in batch, "sdpa gets the rows path's collator"
    trainer.attention = AttentionChoice("sdpa", ROWS, "test")
    with torch.no_grad():
        batch.pop(TOKENS_KEY)
        packed = float(trainer.compute_loss(trainer.model, batch))
    assert packed == pytest.approx(loss_of_documents_alone(trainer.model, rows), rel=1e-5)


def test_varlen_path_hands_cu_seq_lens_to_the_flash_attention_function(trainer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With flash-attn present the job flattens the micro batch and the documents' boundaries reach
    transformers' registered flash_attention_2 function as the kwargs its varlen kernel takes."""
    from transformers.modeling_flash_attention_utils import _flash_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from remote.job.train import job_collator

    choice = choose_attention("flash_attention_2", "sdpa", packing=True, cuda=True, flash_available=lambda: (True, ""))
    assert (choice.implementation, choice.path) == ("flash_attention_2", VARLEN)
    consumed = set(inspect.signature(_flash_attention_forward).parameters)
    assert {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"} <= consumed

    rows = packed_rows(trainer)
    alone = loss_of_documents_alone(trainer.model, rows)  # before the stand-in replaces flash_attention_2
    calls: list[dict[str, Any]] = []

    def varlen_on_cpu(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        """Stand-in for flash_attn_varlen_func: each cu_seq_lens segment attends causally to itself only."""
        calls.append({"mask": attention_mask, **kwargs})
        cu = kwargs["cu_seq_lens_q"].tolist()
        key = key.repeat_interleave(query.shape[1] // key.shape[1], 1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], 1)
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[..., a:b, :], key[..., a:b, :], value[..., a:b, :], is_causal=True, scale=kwargs.get("scaling"))
            for a, b in itertools.pairwise(cu)], dim=2)
        return out.transpose(1, 2).contiguous(), None

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", varlen_on_cpu)
    monkeypatch.setattr(trainer.model.config, "_attn_implementation", "flash_attention_2")
    monkeypatch.setattr(trainer, "attention", choice)
    collator = job_collator(choice, trainer.processing_class,
                            DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id, padding_free=True))
    batch = collator(rows)
    assert batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)), "one flat row"
    lengths = [n for r in rows for n in r["seq_lengths"]]
    with torch.no_grad():
        batch.pop(TOKENS_KEY)
        loss = float(trainer.compute_loss(trainer.model, dict(batch)))
    n_layers = trainer.model.config.num_hidden_layers
    assert len(calls) == n_layers
    for call in calls:
        assert call["mask"] is None
        assert call["cu_seq_lens_q"].tolist() == call["cu_seq_lens_k"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
        assert call["max_length_q"] == call["max_length_k"] == max(lengths) and isinstance(call["max_length_q"], int)
    assert loss == pytest.approx(alone, rel=1e-5)


def _probe(trainer: Any, batch: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    uninstall = attention_probe.install(records.append)
    try:
        with torch.no_grad():
            trainer.model(**{k: v for k, v in batch.items() if k not in (TOKENS_KEY, "labels")})
    finally:
        uninstall()
    return [r for r in records if r["kernel"] != "model_input"]


def test_probe_passes_the_rows_path_and_catches_both_traps(trainer: Any) -> None:
    """What the CI run's probe asserts (tests/job/test_train.py) can fail: a flattened micro batch under
    sdpa attends over B x L keys per query, and packed rows with a plain padding mask attend across documents."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = packed_rows(trainer)
    pad = trainer.processing_class.pad_token_id
    good = trainer.data_collator(rows)
    good["attention_mask"] = block_causal_mask(good.pop(DOCUMENT_IDS_KEY), "sdpa", torch.float32)
    for call in _probe(trainer, good):
        assert call["keys_per_query"] <= SEQ and call["cross_document_pairs"] == 0

    flattened = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)(rows)  # TRL's, fed to sdpa
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        flattened.pop(key)
    calls = _probe(trainer, flattened)
    assert calls and all(c["keys_per_query"] == sum(len(r["input_ids"]) for r in rows) > SEQ for c in calls)
    assert all(c["cross_document_pairs"] == 0 for c in calls), "transformers' (B*L)^2 mask is still block-diagonal"

    padded_rows = DataCollatorForLanguageModeling(pad_token_id=pad, return_position_ids=True)(rows)
    calls = _probe(trainer, padded_rows)
    assert calls and all(c["cross_document_pairs"] > 0 for c in calls), "a 2D padding mask lets documents see each other"


def test_attention_choice_is_recorded_with_its_reason() -> None:
    def missing() -> tuple[bool, str]:
        return False, "the flash-attn package is not installed"

    cpu = choose_attention("flash_attention_2", "sdpa", packing=True, cuda=False)
    assert (cpu.implementation, cpu.path) == ("sdpa", ROWS) and "no CUDA GPU" in cpu.reason
    gpu_without = choose_attention("flash_attention_2", "sdpa", packing=True, cuda=True, flash_available=missing)
    assert (gpu_without.implementation, gpu_without.path) == ("sdpa", ROWS)
    assert "flash-attn package is not installed" in gpu_without.reason and "rows of max_seq_length" in gpu_without.reason
    eager = choose_attention("eager", "sdpa", packing=False, cuda=True)
    assert (eager.implementation, eager.path) == ("eager", "padded") and "padded" in eager.behaviour
