"""The generated model's task and content key (no torch: the training itself runs in the
quantize environment, end to end)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from modelgate.accuracy import local_tasks_dir
from modelgate.model_source import (
    CHOICE_TASK_SEED,
    CHOICE_TASK_SIZE,
    TinyHybridSpec,
    choice_questions,
)


def _answer(question: str) -> int:
    if question.startswith("What comes next:"):
        terms = [int(t) for t in question.split(":", 1)[1].strip(" ,").split(",")]
        return terms[-1] + (terms[-1] - terms[-2])
    a, b = question.removeprefix("Which number is larger, ").rstrip("?").split(" or ")
    return max(int(a), int(b))


def test_choice_questions_have_one_exact_answer_among_four_choices() -> None:
    questions = choice_questions(400, 3)
    assert questions == choice_questions(400, 3)  # deterministic from the seed
    for q in questions:
        assert len(set(q["choices"])) == 4
        assert q["choices"][q["label"]] == str(_answer(q["question"]))
        if q["question"].startswith("Which"):
            # the smaller number is always a choice, so copying either number is not enough
            a, b = q["question"].removeprefix("Which number is larger, ").rstrip("?").split(" or ")
            assert min(a, b, key=int) in q["choices"]
    labels = [q["label"] for q in questions]
    assert all(labels.count(k) > 60 for k in range(4))  # no answer position to learn


def test_the_shipped_task_is_the_generators_held_out_stream() -> None:
    path = local_tasks_dir() / "modelgate_choice" / "choice.jsonl"
    shipped = [json.loads(line) for line in path.read_text().splitlines()]
    assert shipped == choice_questions(CHOICE_TASK_SIZE, CHOICE_TASK_SEED)
    # enough questions for the gate's accuracy check (min_samples 50) to decide
    assert len(shipped) >= 200
    assert TinyHybridSpec().train_seed != CHOICE_TASK_SEED


@pytest.mark.parametrize("change", [
    {"train_steps": 601}, {"train_seed": 100}, {"train_examples": 1999}, {"train_lr": 1e-3},
    {"train_threads": 1}, {"seed": 1}, {"hidden_size": 512},
])
def test_the_content_key_covers_geometry_and_training_recipe(change: dict) -> None:
    spec = TinyHybridSpec()
    assert spec.key() == TinyHybridSpec().key()
    assert replace(spec, **change).key() != spec.key()


def test_the_content_key_covers_the_tool_versions() -> None:
    spec = TinyHybridSpec()
    tools = {"torch": "2.13.0", "transformers": "5.17.0"}
    assert spec.key(tools) == spec.key(dict(reversed(tools.items())))
    assert spec.key(tools) != spec.key({**tools, "torch": "2.14.0"}) != spec.key()
