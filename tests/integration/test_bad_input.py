"""Bad input stops the play before expensive work, with a message naming the input and the fix.

Each case runs the real playbooks through ansible-runner on the local inventory; nothing a
previous run produced is deleted by the failure.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import require_tools, run_playbook, runner_text

pytestmark = [pytest.mark.needs_tools]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools()


def _fails_with(runner: object, *needles: str) -> str:
    text = runner_text(runner)
    assert runner.rc != 0, text[-3000:]  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in text, f"{needle!r} not in output:\n{text[-3000:]}"
    return text


def test_misspelled_recipe_fails_in_preflight_before_quantizing(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "recipe", tags="quantize", extravars={
        "modelgate_variants": [{"name": "bf16", "recipe": "none", "baseline": True},
                               {"name": "w4", "recipe": "w4a61"}]})
    text = _fails_with(runner, "unknown recipe 'w4a61'", "Fix:", "w4a16")
    assert "Quantize each variant" not in text  # stopped before any quantization


def test_misspelled_variant_key_is_refused_by_the_argument_spec(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "variant", tags="quantize", extravars={
        "modelgate_variants": [{"name": "bf16", "recipie": "none", "baseline": True}]})
    # the variant set is checked as a whole at the start of the run
    _fails_with(runner, "recipie", "modelgate_variants[0].recipie", "Fix:")


def test_missing_model_directory_names_the_input(tmp_path: Path) -> None:
    runner = run_playbook(tmp_path, "model", tags="model", extravars={
        "modelgate_model": {"source": "local", "name": "x", "path": str(tmp_path / "nope")}})
    _fails_with(runner, "does not exist", "modelgate_model.path", "Fix:")


def test_unreachable_registry_fails_before_building(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = run_playbook(tmp_path, "registry", tags="quantize,modelcar", extravars={
        "modelgate_registry": {"address": f"127.0.0.1:{port}", "repository": "x/y",
                               "tls_verify": False}})
    _fails_with(runner, f"no registry answers at 127.0.0.1:{port}",
                "modelgate_registry.address")
    assert not list((tmp_path / "runs").glob("*/*/modelcar.json"))


def test_port_in_use_fails_before_starting_vllm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        runner = run_playbook(tmp_path, "port", tags="quantize,modelcar,deploy", extravars={
            "modelgate_serving": {"port": port, "max_model_len": 1024}})
        _fails_with(runner, f"port {port}", "already in use", "Fix:")
    # what the earlier stages produced is kept
    run_dir = (tmp_path / "runs" / "latest").resolve()
    assert (run_dir / "w8a8" / "quantize.json").is_file()
    assert (run_dir / "w8a8" / "modelcar.json").is_file()


def test_inputs_of_the_wrong_kind_stop_the_first_play(tmp_path: Path) -> None:
    # every play includes the modelgate role, whose argument specs check the pipeline's inputs:
    # a target with no serve role, a count that is not a number
    runner = run_playbook(tmp_path, "inputs", extravars={
        "modelgate_target": "triton", "modelgate_validate_rounds": "two"})
    text = _fails_with(runner, "modelgate_target", "triton", "modelgate_validate_rounds")
    assert "Create the tool virtualenvs" not in text  # stopped before provisioning anything


def test_a_variant_name_the_inventory_lacks_is_refused_before_the_run_opens(
        tmp_path: Path) -> None:
    # a survey's multiple-select answer (modelgate_variant_names) naming no variant
    runner = run_playbook(tmp_path, "names", tags="quantize",
                          extravars={"modelgate_variant_names": ["bf16", "fp9"]})
    _fails_with(runner, "modelgate_variant_names: fp9 not among modelgate_variants",
                "bf16, w8a8, w4a16")
    assert not (tmp_path / "runs").exists()  # no run was opened for it
