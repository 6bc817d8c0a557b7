"""A model built from a config (random init) and a byte-level BPE tokenizer trained on the run's own data.

Used by the tiny preset and the tests (nothing downloaded) and by the GPU benchmark (a ~1B Llama shape).
Under ZeRO-3, call `build_random_model` only after the TrainingArguments exist: transformers then builds
it inside `deepspeed.zero.Init`, so each rank only ever holds its partition.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.config import LlamaArchitecture

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Any:
    """Train a byte-level BPE (pad/bos/eos specials, BOS prepended) and save it to `out_dir` atomically.

    Returns the tokenizer as loaded back through AutoTokenizer, which is how every rank and every later
    reader (checkpoints, evaluation) gets it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # A newline is always a token of its own, as in Code Llama's tokenizer (byte 0x0A). Byte-level BPE's
    # regex would merge it with the indentation that follows ("\n   " + " def"), so a prompt ending in
    # "\n" would tokenize differently alone than followed by its answer, and the model would train on a
    # context it never sees at inference.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Llama-style: every encoded text starts with BOS (the prompt/completion split in TRL relies on the
    # prompt's tokens being a prefix of the whole example's, which holds with a leading special token).
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    wrapped.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def llama_config(architecture: LlamaArchitecture | dict[str, Any], tokenizer: Any = None,
                 attn_implementation: str = "sdpa") -> Any:
    """A LlamaConfig from the run config's model.architecture (and the tokenizer's special token ids)."""
    from transformers import LlamaConfig

    a = architecture if isinstance(architecture, LlamaArchitecture) else LlamaArchitecture.model_validate(architecture)
    special: dict[str, Any] = {}
    if tokenizer is not None:
        if len(tokenizer) > a.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but model.architecture.vocab_size is {a.vocab_size}")
        special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = LlamaConfig(
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads,
        vocab_size=a.vocab_size,
        max_position_embeddings=a.max_position_embeddings,
        rope_theta=a.rope_theta,
        tie_word_embeddings=a.tie_word_embeddings,
        **special,
    )
    config._attn_implementation = attn_implementation
    return config


def build_random_model(architecture: LlamaArchitecture | dict[str, Any], tokenizer: Any = None, attn_implementation: str = "sdpa", dtype: Any = None) -> Any:
    """A randomly initialised LlamaForCausalLM of the given shape (under deepspeed.zero.Init when ZeRO-3 is on)."""
    from transformers import AutoModelForCausalLM

    config = llama_config(architecture, tokenizer, attn_implementation)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_config(config, **kwargs)
