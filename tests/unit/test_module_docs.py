"""Each module's documented options (doc fragments included) match its argument spec."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".modelgate" / "collections"
MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py")
                 if p.stem != "__init__")
ANSIBLE_DOC = Path(sys.executable).with_name("ansible-doc")

pytestmark = pytest.mark.skipif(
    not (COLLECTIONS / "ansible_collections" / "modelgate" / "pipeline").exists()
    or not ANSIBLE_DOC.exists(),
    reason="needs the controller virtualenv and the collection link (make bootstrap)")


class _SpecCaptured(Exception):
    pass


@pytest.fixture(scope="module")
def documented() -> dict[str, Any]:
    """ansible-doc's view of every module: the rendered docs, fragments merged in."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run(
        [str(ANSIBLE_DOC), "-j", *(f"modelgate.pipeline.{m}" for m in MODULES)],
        capture_output=True, text=True, check=True, cwd=REPO, env=env)
    return json.loads(proc.stdout)


def _argument_spec(module: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The argument_spec the module passes to AnsibleModule (captured, nothing runs)."""
    monkeypatch.syspath_prepend(str(COLLECTIONS))
    mod = importlib.import_module(
        f"ansible_collections.modelgate.pipeline.plugins.modules.{module}")
    if not hasattr(mod, "main"):  # the documentation of an action plugin: its spec is there
        action = importlib.import_module(
            f"ansible_collections.modelgate.pipeline.plugins.action.{module}")
        return action.ActionModule.ARGUMENT_SPEC
    captured: dict[str, Any] = {}

    def fake_module(*_args: Any, **kwargs: Any) -> None:
        captured.update(kwargs["argument_spec"])
        raise _SpecCaptured

    monkeypatch.setattr(mod, "AnsibleModule", fake_module)
    with pytest.raises(_SpecCaptured):
        mod.main()
    return captured


@pytest.mark.parametrize("module", MODULES)
def test_documented_options_match_the_argument_spec(module, documented, monkeypatch):
    doc = documented[f"modelgate.pipeline.{module}"]["doc"]
    options = doc.get("options") or {}
    spec = _argument_spec(module, monkeypatch)
    assert sorted(options) == sorted(spec), f"{module}: documented vs accepted options differ"
    for name, arg in spec.items():
        opt = options[name]
        assert opt.get("type", "str") == arg.get("type", "str"), f"{module}.{name}: type"
        assert bool(opt.get("required")) == bool(arg.get("required")), f"{module}.{name}: required"
        if "default" in arg:
            assert opt.get("default") == arg["default"], f"{module}.{name}: default"
        if "choices" in arg:
            assert list(opt.get("choices")) == list(arg["choices"]), f"{module}.{name}: choices"
        if "elements" in arg:
            assert opt.get("elements") == arg["elements"], f"{module}.{name}: elements"
