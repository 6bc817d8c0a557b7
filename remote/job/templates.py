"""Prompt templates: one definition shared by training (prompt/completion rows) and evaluation (prompts),
so a model is evaluated in exactly the format it was trained on.

Standard library only (shipped with every run).
"""

from __future__ import annotations

TEMPLATE_NAMES = ("phind", "codellama-instruct", "alpaca", "chat-template", "raw")

# Alpaca's own preamble (Taori et al. 2023), kept verbatim.
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n")


def format_prompt(template: str, instruction: str, system: str = "") -> str:
    """The prompt text for one instruction (everything before the answer).

    phind: Phind-CodeLlama's published format; codellama-instruct: Llama 2 chat's `[INST]` with the system
    prompt in `<<SYS>>` (the BOS token is the tokenizer's business); alpaca: Alpaca's format; raw: the
    instruction and a newline. chat-template goes through the tokenizer (see `chat_messages`).
    """
    if template == "phind":
        return f"### System Prompt\n{system}\n\n### User Message\n{instruction}\n\n### Assistant\n"
    if template == "codellama-instruct":
        sys_part = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
        return f"[INST] {sys_part}{instruction.strip()} [/INST]"
    if template == "alpaca":
        return f"{ALPACA_PREAMBLE}### Instruction:\n{instruction}\n\n### Response:\n"
    if template == "raw":
        return f"{instruction}\n"
    if template == "chat-template":
        raise ValueError("the 'chat-template' prompt comes from the tokenizer: use chat_messages()")
    raise ValueError(f"unknown prompt template {template!r} (one of {', '.join(TEMPLATE_NAMES)})")


def format_completion(template: str, answer: str) -> str:
    """The answer as the model should produce it after `format_prompt` (Llama 2 chat puts a space first)."""
    return " " + answer.lstrip() if template == "codellama-instruct" else answer


def chat_messages(instruction: str, system: str = "") -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": instruction}]
