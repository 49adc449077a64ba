"""Bad input to every `modelgate` command: exit 2 with a JSON error naming it, never a traceback.

The cases are data (tests/data/bad_input/cli_cases.yml); each runs the real entry point
(``python -m modelgate``) in a subprocess, so what a user sees is what is checked. The
figures (cases, exit codes, tracebacks) are written to ``bad_input_cli.json`` in pytest's
base temporary directory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CASES_FILE = REPO / "tests" / "data" / "bad_input" / "cli_cases.yml"
CASES = yaml.safe_load(CASES_FILE.read_text())["cases"]
BINARY = bytes(range(128, 256)) * 8


def _bad_files(folder: Path) -> dict[str, str]:
    """Write the bad files the cases name; returns {placeholder: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"missing": folder / "no-such-file.json", "dir": folder / "a-directory",
             "empty": folder / "empty.json", "binary": folder / "binary.json",
             "list": folder / "list.json", "badyaml": folder / "broken.yaml",
             "object": folder / "object.json", "config": folder / "config.json",
             "binary_recipe": folder / "recipe.yaml"}
    paths["dir"].mkdir(exist_ok=True)
    paths["empty"].write_bytes(b"")
    paths["binary"].write_bytes(BINARY)
    paths["binary_recipe"].write_bytes(BINARY)
    paths["list"].write_text("[1, 2]\n")
    paths["badyaml"].write_text("checks: [\n  - {metric: ttft_ms\n")
    paths["object"].write_text("{}\n")
    paths["config"].write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 256}))
    for name, content in (("model_binary", BINARY), ("model_list", b"[1]")):
        d = folder / name
        d.mkdir(exist_ok=True)
        (d / "config.json").write_bytes(content)
        paths[name] = d
    truncated = folder / "model_truncated"
    truncated.mkdir(exist_ok=True)
    (truncated / "config.json").write_text(paths["config"].read_text())
    raw = json.dumps({"w": {"dtype": "F32", "shape": [2000], "data_offsets": [0, 8000]}}).encode()
    (truncated / "model.safetensors").write_bytes(struct.pack("<Q", len(raw) + 100) + raw)
    paths["model_truncated"] = truncated
    run = folder / "run_binary"
    run.mkdir(exist_ok=True)
    (run / "manifest.json").write_bytes(BINARY)
    (run / "gate.json").write_bytes(BINARY)
    paths["run_binary"] = run
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The bad files, written once for every case."""
    return _bad_files(tmp_path_factory.mktemp("bad-cli-input"))


@pytest.fixture(scope="module")
def cli_summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """Collects each case's outcome; writes the figures to bad_input_cli.json."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    summary = {"cases": len(rows), "exit_2": sum(r["exit"] == 2 for r in rows),
               "tracebacks": sum(r["tracebacks"] for r in rows), "rows": rows}
    out = tmp_path_factory.getbasetemp() / "bad_input_cli.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"\nbad input (CLI): cases {summary['cases']}, exit 2: {summary['exit_2']}, "
          f"tracebacks: {summary['tracebacks']} -> {out}")


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_cli_bad_input(case: dict, bad_files: dict[str, str], cli_summary: list[dict]) -> None:
    argv = [arg.format(**bad_files) if "{" in arg else arg for arg in case["argv"]]
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    proc = subprocess.run([sys.executable, "-m", "modelgate", *argv], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    output = proc.stdout + proc.stderr
    cli_summary.append({"id": case["id"], "exit": proc.returncode,
                        "tracebacks": output.count("Traceback (most recent call last)")})
    assert "Traceback" not in output, output[-3000:]
    assert proc.returncode == case.get("exit", 2), output[-3000:]
    error = json.loads(proc.stdout)
    assert error.get("error"), proc.stdout
    assert error.get("fix"), f"no fix in {proc.stdout}"
    for needle in case["message"]:
        assert needle.format(**bad_files) in proc.stdout, f"{needle!r} not in {proc.stdout}"
