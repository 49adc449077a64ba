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


def _ansible_doc(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(ANSIBLE_DOC), *args], capture_output=True, text=True, cwd=REPO,
                          env=env, check=False, timeout=300)


def _texts(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every ``description``/``short_description`` (with where it is) under a doc tree."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ("description", "short_description", "notes", "details"):
                found.append((here, value))
            found += _texts(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _texts(value, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_the_module_renders_with_ansible_doc(module):
    """``ansible-doc`` renders it as text, as Galaxy and Automation Hub show it, without a
    warning."""
    proc = _ansible_doc("-t", "module", f"modelgate.pipeline.{module}")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    assert f"modelgate.pipeline.{module}" in proc.stdout
    assert "OPTIONS" in proc.stdout and "EXAMPLES" in proc.stdout, proc.stdout[:2000]


@pytest.mark.parametrize("module", MODULES)
def test_every_description_is_text(module, documented):
    """A description item such as ``- Idempotent: ...`` is YAML for a mapping; every
    description, note and attribute detail must be a string or a list of strings."""
    entry = documented[f"modelgate.pipeline.{module}"]
    for where, value in _texts({"doc": entry["doc"], "return": entry.get("return") or {}}):
        items = value if isinstance(value, list) else [value]
        assert all(isinstance(i, str) for i in items), f"{module}: {where} is {value!r}"


def test_the_callback_renders_with_ansible_doc():
    proc = _ansible_doc("-t", "callback", "modelgate.pipeline.progress")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr


FILTER_DOCS = sorted(p.stem for p in (REPO / "plugins" / "filter").glob("*.yml"))


def test_every_filter_has_its_documentation(monkeypatch):
    """Each filter the collection's FilterModules export has a plugins/filter/<name>.yml."""
    monkeypatch.syspath_prepend(str(COLLECTIONS))
    exported = set()
    for path in (REPO / "plugins" / "filter").glob("*.py"):
        mod = importlib.import_module(
            f"ansible_collections.modelgate.pipeline.plugins.filter.{path.stem}")
        exported |= set(mod.FilterModule().filters())
    assert sorted(exported) == FILTER_DOCS


@pytest.mark.parametrize("name", FILTER_DOCS)
def test_the_filter_renders_with_ansible_doc(name):
    proc = _ansible_doc("-t", "filter", f"modelgate.pipeline.{name}")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    assert "EXAMPLES" in proc.stdout and "RETURN VALUES" in proc.stdout, proc.stdout[:2000]
