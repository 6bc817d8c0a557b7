"""Benchmark: tokens/s of the evaluation's generation engine against a plain `model.generate` loop.

    python tests/bench/bench_eval_generate.py                      # CPU: a tiny random Llama, 32 HumanEval prompts
    python tests/bench/bench_eval_generate.py --shape 1b --limit 164 --max-new-tokens 256 --batch-size 16   # a GPU

Both sides generate greedily for the same HumanEval prompts with the same stop strings and max_new_tokens:

- engine: remote.job.evaluate.Generator as an evaluation uses it (vLLM when it imports and a GPU exists,
  tensor parallel over the visible GPUs; else transformers with prompts sorted by length into batches, a
  static KV cache and transformers' stop strings);
- baseline: one `model.generate` per prompt (dynamic cache), the loop a first evaluation script writes.

Tokens are counted the same way on both sides (generated tokens up to and including end-of-sequence, no
padding). Prints tokens, seconds and tokens/s of each, their ratio, and how many greedy completions agree
(batched left-padded fp math may flip a near-tie; on a random model most completions are identical).
The model is random-init (nothing downloaded): `--shape tiny` (CPU) or `--shape 1b` (TinyLlama-1.1B's shape);
`--model PATH` uses a saved model instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4},
}


def build_model(out: Path, shape: str) -> Path:
    """A random-init Llama of `shape` with a byte-level BPE trained on HumanEval (saved to `out`)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from core.evalsets import load_humaneval

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([t.prompt + t.reference for t in load_humaneval().tasks], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), max_position_embeddings=4096, bos_token_id=fast.bos_token_id,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **SHAPES[shape])
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    LlamaForCausalLM(cfg).to(dtype).save_pretrained(out)
    return out


def baseline(model_path: str, prompts, gen) -> tuple[list[list[str]], int, float]:
    """One model.generate per prompt, dynamic cache: (completions, tokens, seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remote.job import prompts_eval
    from remote.job.evaluate import generated_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if device == "cuda" else torch.float32).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out, tokens = [], 0
    _sync()
    start = time.perf_counter()
    for p in prompts:
        enc = tokenizer(p.text, return_tensors="pt").to(device)
        with torch.no_grad():
            seq = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False, pad_token_id=pad,
                                 stop_strings=list(p.stops), tokenizer=tokenizer)
        new = seq[:, enc["input_ids"].shape[1]:]
        tokens += generated_tokens(new.tolist(), tokenizer.eos_token_id, pad)
        out.append([prompts_eval.truncate(t, p.stops) for t in tokenizer.batch_decode(new, skip_special_tokens=True)])
    _sync()
    seconds = time.perf_counter() - start
    del model
    return out, tokens, seconds


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a saved model directory (default: a random-init model of --shape)")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="random model shape (default: 1b on a GPU, tiny on CPU)")
    p.add_argument("--limit", type=int, default=32, help="HumanEval prompts (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--engine", choices=("vllm", "transformers"), default=None, help="default: as an evaluation picks")
    args = p.parse_args()

    import torch

    from core.evalsets import load_humaneval
    from remote.job import prompts_eval
    from remote.job.evaluate import Generator, GenSettings

    prompts = [prompts_eval.build_prompt(t, "base") for t in load_humaneval().tasks[: args.limit]]
    gen = GenSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="tunedeck-bench-eval-") as tmp:
        shape = args.shape or ("1b" if torch.cuda.is_available() else "tiny")
        model_path = args.model or str(build_model(Path(tmp), shape))
        generator = Generator(model_path, backend=args.engine)
        generator.generate(prompts[: min(2, len(prompts))], gen)  # warm-up (kernels, allocator)
        _sync()
        texts = generator.generate(prompts, gen)
        ours = generator.stats
        engine, gpus = generator.engine, generator.describe_gpus()
        del generator
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        base_texts, base_tokens, base_s = baseline(model_path, prompts, gen)
    same = sum(a == b for a, b in zip(texts, base_texts, strict=True))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"model: {args.model or f'random {shape}'}; {len(prompts)} HumanEval prompts, max_new_tokens "
          f"{args.max_new_tokens}, batch {args.batch_size}, greedy; device {device}")
    print(f"engine   {engine:<13} gpus {gpus:<6} {ours.tokens:>8} tokens {ours.seconds:8.2f} s "
          f"{ours.tokens_per_s or 0:10.1f} tokens/s")
    print(f"baseline {'generate loop':<13} {'':<11} {base_tokens:>8} tokens {base_s:8.2f} s "
          f"{base_tokens / base_s if base_s else 0:10.1f} tokens/s")
    ratio = (ours.tokens_per_s or 0) / (base_tokens / base_s) if base_s and base_tokens else float("nan")
    print(f"ratio    {ratio:.2f}x tokens/s of the plain loop; identical greedy completions {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
