"""The generated model has learned its task: the session's model (scripts/pytest.sh builds it
once, through the same ``resolve_model`` the model stage calls) records its training, and a
second resolve finds it by the same content key without training again."""

from __future__ import annotations

import json

import pytest
from conftest import tool_path
from modelgate.model_source import TinyHybridSpec, resolve_model, tiny_hybrid_key

pytestmark = pytest.mark.needs_tools


def test_the_session_model_learned_the_choice_task() -> None:
    model = tool_path("MODELGATE_TEST_MODEL")
    python = str(tool_path("MODELGATE_QUANTIZE_PYTHON"))
    built = json.loads((model / "modelgate-generated.json").read_text())
    training = built["training"]
    assert training["task"] == "modelgate_choice" and training["steps"] > 0
    # well above chance (0.25) on the task's own held-out questions
    assert training["heldout_accuracy"] >= 0.8 > 2 * training["chance"]
    # the key is computed without training (check mode) and names the directory
    assert model.name == f"generated-{tiny_hybrid_key(TinyHybridSpec(), python)}"
    again = resolve_model("generated", store_dir=model.parent.parent, generator_python=python)
    assert again.changed is False and again.path == str(model)
    assert again.digest.startswith("sha256:")
