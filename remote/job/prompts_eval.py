"""Evaluation prompts per model kind, stop sequences, and turning a completion into a checkable program.

Standard library + core.evalsets only (shipped to the cluster).

- base / python models complete the raw prompt. HumanEval(+): the function signature and docstring, cut at
  the first `\\nclass`, `\\ndef`, `\\n#`, `\\nif` or `\\nprint` (the Codex paper's stops). MBPP(+): three-shot
  with tasks 2, 3 and 4 in the MBPP paper's `[BEGIN]` / `[DONE]` format, cut at `[DONE]`.
- HumanEval+: the original tests, then EvalPlus's base_input + plus_input: the completion's output on each
  input is compared with the canonical solution's (floats with the task's atol and rel 1e-7; find_zero by
  |poly(x)| <= atol, as EvalPlus does). The canonical outputs are computed once per task, in the sandbox
  (evaluate.plus_expected); the completion then gets max(timeout, 4 x canonical time + 1 s), like
  EvalPlus's time limits. MBPP+: its original asserts, then its EvalPlus inputs the same way. EvalPlus
  stores inputs as JSON (tuples become lists, complex numbers strings): the task's own input contract
  decides which lists go back to tuples and which strings back to numbers, and the task's example
  assertion decides how outputs compare (as sets for `set(f(...)) ==`, by truth value for
  `assert f(...)`); where the canonical solution's own output order varies from run to run, as multisets.
  Where the canonical solution cannot run on its inputs, the task keeps its original asserts only and its
  sample rows say plus_tests: false.
- instruct models get the run's prompt template (phind, codellama-instruct, alpaca, the tokenizer's chat
  template, or raw) around an instruction, and the code is taken from the answer's first ```python block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


# Shared by the reference and the check programs. EvalPlus stores inputs as JSON, which turns tuples into
# lists; the task's own input contract (its `contract` field: `assert isinstance(t, tuple)` and the like)
# tells which lists were tuples. The reference program picks, per argument, the fewest list -> tuple
# conversions (at nesting depth 0, 1 or 2) under which every input satisfies the contract, and hands that
# choice to the check program, so both run on the same inputs.
_PLUS_PRELUDE = """
import builtins as _b, copy as _copy, hashlib as _hashlib, inspect as _inspect, itertools as _itertools
import json as _json, marshal as _marshal, math as _math, sys as _sys, textwrap as _textwrap
# Builtins through _b: a solution may define its own `sum` or `set` (MBPP's tasks do).
# -1: lists at every depth; -2: a number written as a string (EvalPlus stores complex numbers so) back to one
_OPTIONS = ((), (0,), (1,), (0, 1), (2,), (1, 2), (0, 2), (0, 1, 2), (-1,), (-2,))
def _to_tuples(x, depth):
    if depth == -2:
        if _b.isinstance(x, _b.str):
            for _f in (_b.int, _b.float, _b.complex):
                try:
                    return _f(x)
                except ValueError:
                    pass
        return x
    if depth == -1:
        return _b.tuple(_to_tuples(e, -1) for e in x) if _b.isinstance(x, (_b.list, _b.tuple)) else x
    if depth == 0:
        return _b.tuple(x) if _b.isinstance(x, _b.list) else x
    if _b.isinstance(x, (_b.list, _b.tuple)):
        return _b.type(x)(_to_tuples(e, depth - 1) for e in x)
    return x
def _convert(conv, args):
    if conv is None:
        return _b.list(args)
    out = []
    for a, depths in _b.zip(args, conv):
        for d in _b.sorted(depths, reverse=True):
            a = _to_tuples(a, d)
        out.append(a)
    return out
def _plain(v, mode):
    # what is compared: a truth value in "truthy" mode; a dict subclass (Counter, defaultdict) as a dict
    if mode == "truthy":
        return _b.bool(v)
    if _b.isinstance(v, _b.dict) and _b.type(v) is not _b.dict:
        return _b.dict(v)
    return v
"""

_PLUS_REFERENCE = """
_raw = _json.loads({inputs!r})
_contract_src = {contract!r}
_conv = None
if _contract_src.strip() and _raw:
    _params = _b.list(_inspect.signature({entry}).parameters)
    exec("def _tunedeck_contract(" + ", ".join(_params) + "):\\n" + _textwrap.indent(_textwrap.dedent(_contract_src), "    ")
         + "\\n    return True\\n", _b.globals())
    def _satisfied(conv):
        for _args in _raw:
            try:
                _tunedeck_contract(*_convert(conv, _copy.deepcopy(_args)))
            except Exception:
                return False
        return True
    _n = _b.len(_raw[0])
    _choices = _itertools.product(_OPTIONS, repeat=_n) if _n <= 3 else (_b.tuple([o] * _n) for o in _OPTIONS)
    for _c in _b.sorted(_choices, key=lambda c: _b.sum(_b.len(d) if d[:1] not in ((-1,), (-2,)) else 9 for d in c)):
        if _satisfied(_c):
            _conv = _c if _b.any(_c) else None
            break
_out = []
for _args in _raw:
    _v = _plain({entry}(*_convert(_conv, _copy.deepcopy(_args))), {mode!r})
    _m = _marshal.dumps(_v, 2)
    # a huge output (HumanEval/15 makes megabyte strings) is checked by digest instead of carried whole
    _out.append(("h", _hashlib.sha256(_m).hexdigest()) if _b.len(_m) > 65536 else ("v", _v))
# marshal, not repr: exact types (tuple vs list, nan, inf) and linear time for huge ints (HumanEval/83)
_sys.stdout.write("\\n" + {marker!r} + _marshal.dumps((_conv, _out)).hex() + "\\n")
"""
PLUS_MARKER = "@@tunedeck-expected@@"

_PLUS_CHECK = """
_atol = {atol!r}
_payload = _marshal.loads(_b.bytes.fromhex({expected!r}))
_conv, _exp_all = _payload[0], _payload[1]
_mode = _payload[2] if _b.len(_payload) > 2 else {mode!r}  # "multiset" when the canonical order varies by run
def _close(out, exp):
    if _b.isinstance(exp, _b.float) or (_b.isinstance(out, _b.float) and _b.isinstance(exp, _b.int) and not _b.isinstance(exp, _b.bool)):
        if not _b.isinstance(out, (_b.int, _b.float)) or _b.isinstance(out, _b.bool):
            return False
        return (_math.isnan(out) and _math.isnan(exp)) or _math.isclose(out, exp, rel_tol=1e-7, abs_tol=_atol)
    if _b.isinstance(exp, (_b.list, _b.tuple)) and _b.type(out) is _b.type(exp) and _b.any(_b.isinstance(x, _b.float) for x in exp):
        return _b.len(out) == _b.len(exp) and _b.all(_close(o, e) for o, e in _b.zip(out, exp))
    return out == exp
def _bag(v):
    # the elements of a list/tuple/set in an order of their own: a multiset, duplicates counted
    return _b.sorted(_b.map(_b.repr, v))
def _same(out, exp):
    if _close(out, exp):
        return True
    if _mode == "set":  # the task's own assert compares set(f(...)): what set() keeps is the answer
        try:
            return _b.set(out) == _b.set(exp)
        except TypeError:
            return False
    if _mode == "multiset":  # same elements, any order (duplicates count)
        kinds = (_b.list, _b.tuple, _b.set, _b.frozenset)
        return _b.isinstance(out, kinds) and _b.isinstance(exp, kinds) and _bag(out) == _bag(exp)
    return False
def _poly(xs, x):
    return _b.sum(coeff * x ** i for i, coeff in _b.enumerate(xs))
for _i, _args in _b.enumerate(_json.loads({inputs!r})):
    _args = _convert(_conv, _args)
    _out = _plain({entry}(*_copy.deepcopy(_args)), _mode)
    if {entry!r} == "find_zero":
        assert _b.abs(_poly(_args[0], _out)) <= _atol, "plus input %d" % _i
    elif _exp_all[_i][0] == "h":
        try:
            _d = _hashlib.sha256(_marshal.dumps(_out, 2)).hexdigest()
        except ValueError:
            _d = None
        assert _d == _exp_all[_i][1], "plus input %d" % _i
    else:
        assert _same(_out, _exp_all[_i][1]), "plus input %d" % _i
"""

PLUS_BENCHMARKS = ("humanevalplus", "mbppplus")


def has_plus_inputs(task: EvalTask) -> bool:
    return task.benchmark in PLUS_BENCHMARKS and bool(task.entry_point) and "plus_input" in task.meta


def output_mode(task: EvalTask) -> str:
    """How a completion's outputs are compared with the canonical ones, read off the task's own example
    assertion (MBPP+ prompts hold one): "set" when it compares `set(f(...))` (the order is not part of the
    answer), "truthy" when it asserts `f(...)` or `not f(...)` (any true or false value will do, a
    match object included), else "eq" (equal; floats within the task's atol)."""
    import ast

    if task.benchmark != "mbppplus":
        return "eq"
    src = task.prompt.strip().strip('"').strip()
    for line in src.splitlines():
        line = line.strip()
        if not line.startswith("assert "):
            continue
        try:
            test = ast.parse(line).body[0].test  # type: ignore[attr-defined]
        except (SyntaxError, IndexError, AttributeError):
            return "eq"

        def calls_entry(node: ast.AST) -> bool:
            return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == task.entry_point

        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test = test.operand
        if calls_entry(test):
            return "truthy"
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Call) and isinstance(test.left.func, ast.Name)
                and test.left.func.id == "set" and test.left.args and calls_entry(test.left.args[0])):
            return "set"
        return "eq"
    return "eq"


def _plus_inputs(task: EvalTask) -> str:
    return json.dumps(list(task.meta.get("base_input", [])) + list(task.meta.get("plus_input", [])))


def plus_reference_program(task: EvalTask) -> str:
    """Runs the canonical solution on every EvalPlus input and prints (conversion, outputs) (marshal, hex)
    after PLUS_MARKER."""
    return (task.reference + "\n" + _PLUS_PRELUDE
            + _PLUS_REFERENCE.format(inputs=_plus_inputs(task), entry=task.entry_point, marker=PLUS_MARKER,
                                     contract=task.meta.get("contract") or "", mode=output_mode(task)))


def parse_plus_expected(stdout: str) -> str | None:
    i = stdout.rfind(PLUS_MARKER)
    return None if i < 0 else stdout[i + len(PLUS_MARKER):].split("\n", 1)[0]


def reconcile_runs(first: str, second: str) -> str | None:
    """Two runs of a canonical solution (payloads of PLUS_MARKER) that differ: the first, with its outputs to
    be compared as multisets, when every difference is one of order only (lists, tuples or sets holding the
    same elements, duplicates counted); else None (not checkable: no plus tests).

    Two runs can also agree by chance (a two-string set comes out in the same order half the time); over a
    task's dozens of inputs that chance is negligible, for a task with a few inputs it is not."""
    import marshal

    kinds = (list, tuple, set, frozenset)

    def order_only(va: Any, vb: Any) -> bool:
        return (isinstance(va, kinds) and type(va) is type(vb)
                and sorted(map(repr, va)) == sorted(map(repr, vb)))

    try:  # the canonical solution's own output, as the sandboxed reference program wrote it
        a, b = marshal.loads(bytes.fromhex(first)), marshal.loads(bytes.fromhex(second))
        if a[0] != b[0] or len(a[1]) != len(b[1]):
            return None
        for (ka, va), (kb, vb) in zip(a[1], b[1], strict=True):
            if (ka, va) != (kb, vb) and not (ka == kb == "v" and order_only(va, vb)):
                return None
    except (ValueError, EOFError, TypeError):
        return None
    return marshal.dumps((a[0], a[1], "multiset")).hex()


def plus_check(task: EvalTask, expected: str | None) -> str:
    """EvalPlus's extra checks against the canonical outputs (empty without EvalPlus inputs)."""
    if not has_plus_inputs(task) or expected is None:
        return ""
    return _PLUS_PRELUDE + _PLUS_CHECK.format(atol=float(task.meta.get("atol") or 0.0), expected=expected,
                                              inputs=_plus_inputs(task), entry=task.entry_point, mode=output_mode(task))


def program(task: EvalTask, completion: str, kind: str = "base", plus_expected: str | None = None) -> str:
    """The whole program the sandbox runs: solution, then the task's tests (then HumanEval+'s plus inputs
    when the canonical outputs `plus_expected` are given)."""
    return solution_code(task, completion, kind) + "\n\n" + task.test + plus_check(task, plus_expected)
