"""Evaluation prompts per model kind, stop sequences, and turning a completion into a checkable program.

Standard library + core.evalsets only (shipped to the cluster).

- base / python models complete the raw prompt. HumanEval(+): the function signature and docstring, cut at
  the first `\\nclass`, `\\ndef`, `\\n#`, `\\nif` or `\\nprint` (the Codex paper's stops). MBPP(+): three-shot
  with tasks 2, 3 and 4 in the MBPP paper's `[BEGIN]` / `[DONE]` format, cut at `[DONE]`.
- HumanEval+: the original tests, then EvalPlus's base_input + plus_input: the completion's output on each
  input is compared with the canonical solution's (floats with the task's atol and rel 1e-7; find_zero by
  |poly(x)| <= atol, as EvalPlus does). The canonical outputs are computed once per task, in the sandbox
  (evaluate.plus_expected); the completion then gets max(timeout, 4 x canonical time + 1 s), like
  EvalPlus's time limits. MBPP+: the original asserts only (EvalPlus's per-task input conversions, e.g.
  lists to tuples, are not reproduced).
- instruct models get the run's prompt template (phind, codellama-instruct, alpaca, the tokenizer's chat
  template, or raw) around an instruction, and the code is taken from the answer's first ```python block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.evalsets import EvalTask
from remote.job.templates import chat_messages, format_prompt

BASE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOPS = ("[DONE]",)
MBPP_BENCHMARKS = ("mbpp", "mbppplus")
TEMPLATE_STOPS = {
    "phind": ("\n### User Message", "\n### System Prompt"),
    "codellama-instruct": ("[INST]",),
    "alpaca": ("\n### Instruction",),
    "chat-template": (),
    "raw": (),
}


@dataclass(frozen=True)
class PromptSpec:
    """What to generate from for one task, and how to cut the generation."""

    task_id: str
    text: str
    stops: tuple[str, ...]


def mbpp_block(text: str, tests: Sequence[str], code: str | None = None) -> str:
    """One task in the MBPP paper's prompt format (Austin et al. 2021, section 2.2)."""
    head = (f"You are an expert Python programmer, and here is your task: {text} "
            f"Your code should pass these tests:\n\n" + "\n".join(tests) + "\n[BEGIN]\n")
    return head if code is None else head + code.strip() + "\n[DONE]\n"


def mbpp_fewshot_prefix(examples: Sequence[EvalTask]) -> str:
    """The three-shot prefix from the prompt-split tasks 2, 3, 4 (as loaded by core.evalsets.load_mbpp)."""
    return "".join(mbpp_block(t.meta["text"], t.meta["test_list"], t.reference) for t in examples)


def _mbpp_text_tests(task: EvalTask) -> tuple[str, list[str]]:
    if "text" in task.meta and "test_list" in task.meta:
        return task.meta["text"], list(task.meta["test_list"])
    # MBPP+: the prompt is the task text followed by one example assert.
    lines = task.prompt.strip().splitlines()
    asserts = [ln for ln in lines if ln.strip().startswith("assert")]
    text = " ".join(ln.strip() for ln in lines if not ln.strip().startswith("assert"))
    return text, asserts


def instruction(task: EvalTask) -> str:
    """The user message an instruct model gets for a task."""
    if task.benchmark in MBPP_BENCHMARKS:
        text, tests = _mbpp_text_tests(task)
        return f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests) + "\n"
    return ("Complete the following Python function. Answer with the whole function in a ```python code "
            f"block.\n\n```python\n{task.prompt.rstrip()}\n```\n")


def apply_template(template: str, system: str, user: str, chat_template: Callable[[list[dict]], str] | None = None) -> str:
    """Wrap a user message in the run's prompt template (remote.job.templates: the training format)."""
    if template == "chat-template":
        if chat_template is None:
            raise ValueError("prompt template 'chat-template' needs a tokenizer with a chat template")
        return chat_template(chat_messages(user, system))
    return format_prompt(template, user, system)


def build_prompt(task: EvalTask, kind: str, template: str = "raw", system: str = "",
                 fewshot: Sequence[EvalTask] = (), chat_template: Callable[[list[dict]], str] | None = None) -> PromptSpec:
    if kind == "instruct":
        return PromptSpec(task.task_id, apply_template(template, system, instruction(task), chat_template),
                          TEMPLATE_STOPS.get(template, ()))
    if task.benchmark in MBPP_BENCHMARKS:
        text, tests = _mbpp_text_tests(task)
        return PromptSpec(task.task_id, mbpp_fewshot_prefix(fewshot) + mbpp_block(text, tests), MBPP_STOPS)
    return PromptSpec(task.task_id, task.prompt, BASE_STOPS)


def truncate(text: str, stops: Sequence[str]) -> str:
    """Cut a generation at the earliest stop sequence."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer (an unclosed block runs to the end); the answer if none."""
    m = _BLOCK.search(answer)
    return m.group(1) if m else answer


def _prompt_imports(prompt: str) -> str:
    return "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from "))) + "\n"


def solution_code(task: EvalTask, completion: str, kind: str) -> str:
    """The solution part of the program for a (base or instruct) completion."""
    if kind == "instruct":
        code = extract_code(completion)
        if task.benchmark in MBPP_BENCHMARKS:
            return code
        if task.entry_point and re.search(rf"^\s*def\s+{re.escape(task.entry_point)}\s*\(", code, re.MULTILINE):
            return _prompt_imports(task.prompt) + code
        return task.prompt + code
    if task.benchmark in MBPP_BENCHMARKS:
        return completion
    return task.prompt + completion


_PLUS_REFERENCE = """
import copy as _copy, hashlib as _hashlib, json as _json, marshal as _marshal, sys as _sys
_out = []
for _args in _json.loads({inputs!r}):
    _v = {entry}(*_copy.deepcopy(_args))
    _b = _marshal.dumps(_v, 2)
    # a huge output (HumanEval/15 makes megabyte strings) is checked by digest instead of carried whole
    _out.append(("h", _hashlib.sha256(_b).hexdigest()) if len(_b) > 65536 else ("v", _v))
# marshal, not repr: exact types (tuple vs list, nan, inf) and linear time for huge ints (HumanEval/83)
_sys.stdout.write("\\n" + {marker!r} + _marshal.dumps(_out).hex() + "\\n")
"""
PLUS_MARKER = "@@tunedeck-expected@@"

_PLUS_CHECK = """
import copy as _copy, hashlib as _hashlib, json as _json, marshal as _marshal, math as _math
_atol = {atol!r}
_exp_all = _marshal.loads(bytes.fromhex({expected!r}))
def _close(out, exp):
    if isinstance(exp, float) or (isinstance(out, float) and isinstance(exp, int) and not isinstance(exp, bool)):
        if not isinstance(out, (int, float)) or isinstance(out, bool):
            return False
        return (_math.isnan(out) and _math.isnan(exp)) or _math.isclose(out, exp, rel_tol=1e-7, abs_tol=_atol)
    if isinstance(exp, (list, tuple)) and type(out) is type(exp) and any(isinstance(x, float) for x in exp):
        return len(out) == len(exp) and all(_close(o, e) for o, e in zip(out, exp))
    return out == exp
def _poly(xs, x):
    return sum(coeff * x ** i for i, coeff in enumerate(xs))
for _i, _args in enumerate(_json.loads({inputs!r})):
    _out = {entry}(*_copy.deepcopy(_args))
    if {entry!r} == "find_zero":
        assert abs(_poly(_args[0], _out)) <= _atol, "plus input %d" % _i
    elif _exp_all[_i][0] == "h":
        try:
            _d = _hashlib.sha256(_marshal.dumps(_out, 2)).hexdigest()
        except ValueError:
            _d = None
        assert _d == _exp_all[_i][1], "plus input %d" % _i
    else:
        assert _close(_out, _exp_all[_i][1]), "plus input %d" % _i
"""


def has_plus_inputs(task: EvalTask) -> bool:
    return task.benchmark == "humanevalplus" and bool(task.entry_point) and "plus_input" in task.meta


def _plus_inputs(task: EvalTask) -> str:
    return json.dumps(list(task.meta.get("base_input", [])) + list(task.meta.get("plus_input", [])))


def plus_reference_program(task: EvalTask) -> str:
    """Runs the canonical solution on every EvalPlus input and prints its outputs (marshal, hex) after PLUS_MARKER."""
    return task.reference + "\n" + _PLUS_REFERENCE.format(inputs=_plus_inputs(task), entry=task.entry_point, marker=PLUS_MARKER)


def parse_plus_expected(stdout: str) -> str | None:
    i = stdout.rfind(PLUS_MARKER)
    return None if i < 0 else stdout[i + len(PLUS_MARKER):].split("\n", 1)[0]


def plus_check(task: EvalTask, expected: str | None) -> str:
    """HumanEval+'s extra checks against the canonical outputs (empty without EvalPlus inputs)."""
    if not has_plus_inputs(task) or expected is None:
        return ""
    return _PLUS_CHECK.format(atol=float(task.meta.get("atol") or 0.0), expected=expected,
                              inputs=_plus_inputs(task), entry=task.entry_point)


def program(task: EvalTask, completion: str, kind: str = "base", plus_expected: str | None = None) -> str:
    """The whole program the sandbox runs: solution, then the task's tests (then HumanEval+'s plus inputs
    when the canonical outputs `plus_expected` are given)."""
    return solution_code(task, completion, kind) + "\n\n" + task.test + plus_check(task, plus_expected)
