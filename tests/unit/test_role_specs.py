"""No role option is both required and defaulted: such an option could never fail.

``required: true`` is checked by Ansible only when the variable is undefined, and a default
(in the argument spec, or in ``defaults/main.yml``, which Ansible loads before the check)
always defines it. So an option is either required with no default, or optional with one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))


def _role_defaults(role: Path) -> dict[str, Any]:
    path = role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _options(options: dict[str, Any] | None, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted name, spec) of every option, suboptions included."""
    for name, spec in (options or {}).items():
        yield prefix + name, spec
        yield from _options(spec.get("options"), f"{prefix}{name}.")


def required_and_defaulted(role: Path) -> list[str]:
    """``entry point: option (where the default is)`` for each required option with a default."""
    defaults = _role_defaults(role)
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    found = []
    for entry, spec in specs.items():
        for name, option in _options(spec.get("options")):
            if not option.get("required"):
                continue
            if "default" in option:
                found.append(f"{entry}: {name} (default in meta/argument_specs.yml)")
            if name in defaults:  # suboptions have dotted names: never role variables
                found.append(f"{entry}: {name} (default in defaults/main.yml)")
    return found


def test_every_role_has_an_argument_spec():
    assert {r.name for r in ROLES} == {p.name for p in (REPO / "roles").iterdir() if p.is_dir()}


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_no_option_is_both_required_and_defaulted(role):
    assert required_and_defaulted(role) == [], (
        "required options with a default can never fail: drop the default (if every caller "
        "passes the value) or drop required: true")


def test_the_check_catches_both_kinds_of_default(tmp_path):
    role = tmp_path / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump({"argument_specs": {"main": {
        "options": {
            "demo_a": {"type": "str", "required": True, "default": "x"},
            "demo_b": {"type": "str", "required": True},
            "demo_c": {"type": "str", "default": "y"},
            "demo_d": {"type": "dict", "options": {
                "inner": {"type": "int", "required": True, "default": 1}}},
        }}}}))
    (role / "defaults" / "main.yml").write_text("demo_b: ''\ndemo_c: y\n")
    assert required_and_defaulted(role) == [
        "main: demo_a (default in meta/argument_specs.yml)",
        "main: demo_b (default in defaults/main.yml)",
        "main: demo_d.inner (default in meta/argument_specs.yml)",
    ]
