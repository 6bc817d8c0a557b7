"""Training and evaluation format prompts the same way (a model is scored in the format it learned)."""

import datasets
import pytest

from core.config import DataSection
from remote.job.prompts_eval import apply_template
from remote.job.templates import TEMPLATE_NAMES, format_prompt
from remote.job.train import to_prompt_completion

SYSTEM = "You are an intelligent programming assistant."
INSTRUCTION = "  Write a function that adds two numbers.\n"


@pytest.mark.parametrize("template", [t for t in TEMPLATE_NAMES if t != "chat-template"])
def test_training_prompt_equals_the_evaluation_prompt(template):
    ds = datasets.Dataset.from_list([{"instruction": INSTRUCTION, "answer": "def add(a, b):\n    return a + b\n"}])
    data = DataSection(instruction_field="instruction", answer_field="answer", system_field=None,
                       prompt_template=template, system_prompt=SYSTEM)
    row = to_prompt_completion(ds, data, tokenizer=None)[0]
    assert row["prompt"] == apply_template(template, SYSTEM, INSTRUCTION)
    assert row["completion"].strip() == "def add(a, b):\n    return a + b"


def test_published_formats():
    assert format_prompt("phind", "Q", SYSTEM) == f"### System Prompt\n{SYSTEM}\n\n### User Message\nQ\n\n### Assistant\n"
    assert format_prompt("codellama-instruct", " Q ", SYSTEM) == f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nQ [/INST]"
    assert format_prompt("codellama-instruct", "Q") == "[INST] Q [/INST]"
    assert format_prompt("alpaca", "Q").endswith("### Instruction:\nQ\n\n### Response:\n")
    with pytest.raises(ValueError, match="unknown prompt template"):
        format_prompt("vicuna", "Q")
