"""Published pass@1 numbers, shown as toggleable reference lines on the pass@1 charts.

HumanEval and MBPP pass@1 (%) from the Code Llama paper (Rozière et al. 2023, Table 2: greedy decoding;
MBPP 3-shot), Phind's announcement (Aug 2023) and the GPT-4 technical report (HumanEval 0-shot 67.0).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    model: str
    benchmark: str  # humaneval | mbpp
    pass_at_1: float  # percent
    source: str


_CODE_LLAMA = "Code Llama paper (Rozière et al. 2023), Table 2"
REFERENCES: tuple[Reference, ...] = (
    Reference("Code Llama-7B", "humaneval", 33.5, _CODE_LLAMA),
    Reference("Code Llama-13B", "humaneval", 36.0, _CODE_LLAMA),
    Reference("Code Llama-34B", "humaneval", 48.8, _CODE_LLAMA),
    Reference("Code Llama-Python-7B", "humaneval", 38.4, _CODE_LLAMA),
    Reference("Code Llama-Python-13B", "humaneval", 43.3, _CODE_LLAMA),
    Reference("Code Llama-Python-34B", "humaneval", 53.7, _CODE_LLAMA),
    Reference("Code Llama-Instruct-34B", "humaneval", 41.5, _CODE_LLAMA),
    Reference("Unnatural Code Llama-34B", "humaneval", 62.2, _CODE_LLAMA),
    Reference("Phind-CodeLlama-34B-v1", "humaneval", 67.6, "Phind blog, Aug 2023"),
    Reference("Phind-CodeLlama-34B-Python-v1", "humaneval", 69.5, "Phind blog, Aug 2023"),
    Reference("GPT-4", "humaneval", 67.0, "GPT-4 technical report (OpenAI 2023)"),
    Reference("GPT-3.5", "humaneval", 48.1, "GPT-4 technical report, as cited in the Code Llama paper"),
    Reference("Code Llama-7B", "mbpp", 41.4, _CODE_LLAMA),
    Reference("Code Llama-13B", "mbpp", 47.0, _CODE_LLAMA),
    Reference("Code Llama-34B", "mbpp", 55.0, _CODE_LLAMA),
    Reference("Code Llama-Python-7B", "mbpp", 47.6, _CODE_LLAMA),
    Reference("Code Llama-Python-13B", "mbpp", 49.0, _CODE_LLAMA),
    Reference("Code Llama-Python-34B", "mbpp", 56.2, _CODE_LLAMA),
    Reference("Code Llama-Instruct-34B", "mbpp", 57.0, _CODE_LLAMA),
    Reference("Unnatural Code Llama-34B", "mbpp", 61.2, _CODE_LLAMA),
    Reference("GPT-3.5", "mbpp", 52.2, _CODE_LLAMA),
)

# The lines shown by default on a HumanEval chart (the ones the Phind story is about).
DEFAULT_SHOWN = {"Code Llama-34B", "Code Llama-Python-34B", "Phind-CodeLlama-34B-v1", "GPT-4"}


def references_for(benchmark: str) -> list[Reference]:
    base = benchmark.removesuffix("plus")  # HumanEval+/MBPP+ have no published Code Llama numbers: show the base ones
    return [r for r in REFERENCES if r.benchmark == base]
