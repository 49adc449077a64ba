"""The execution environment: its build context has everything the collection's code imports.

`scripts/ee-context.sh` builds the collection's tarball and runs `ansible-builder create`; the
Python requirements the image would install are then computed by the context's own
introspection script (the step the image's builder stage runs) over the collection installed
from that tarball. Every third-party module the collection's plugins import, and what the
modelgate modules they import import in turn, must be installed by those requirements, by
ansible-core (which the image installs first) or by the modelgate package the image installs
from the collection; or, for the tools (torch, transformers, LLM Compressor, vLLM, GuideLLM,
lm-eval), by the tool virtualenv the toolchain role makes on the host that runs the tool
(requirements/<venv>.lock.txt), imported lazily inside the function that runs there.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

BIN = REPO / ".modelgate" / "venvs" / "controller" / "bin"


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute imports of a file, top-level or inside functions (lazy ones count)."""
    tree = ast.parse(path.read_text())
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def tool_venv_dists() -> set[str]:
    """What the tool virtualenvs install (the toolchain role makes them where tools run)."""
    return {_dist(line) for venv in ("quantize", "serve", "bench")
            for line in (REPO / "requirements" / f"{venv}.lock.txt").read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-"))}


def collection_imports() -> dict[str, set[str]]:
    """Third-party top-level module -> the files importing it, from the plugins through the
    modelgate modules they reach."""
    seen: set[Path] = set()
    todo = sorted((REPO / "plugins").rglob("*.py"))
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "modelgate":
                parts = name.split(".")[1:]
                mod = REPO / "python" / "modelgate" / Path(*parts) if parts else None
                for cand in ([mod.with_suffix(".py"), mod / "__init__.py"] if mod else
                             [REPO / "python" / "modelgate" / "__init__.py"]):
                    if cand.is_file():
                        todo.append(cand)
            elif top not in sys.stdlib_module_names and top not in (
                    "ansible", "ansible_collections", "__future__"):
                found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _dist(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[#]", requirement.strip(), maxsplit=1)[0].lower().replace(
        "_", "-")


def test_the_build_context_installs_every_module_the_collection_imports(tmp_path: Path) -> None:
    context = tmp_path / "context"
    subprocess.run(["bash", str(REPO / "scripts" / "ee-context.sh"), str(context)],
                   check=True, capture_output=True, text=True)
    assert (context / "Containerfile").is_file()
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    tarball = REPO / ".modelgate" / "ee" / "collection" / galaxy["collections"][0]["name"].split(
        "/")[-1]
    assert (context / "_build" / "collection" / tarball.name).is_file()
    containerfile = (context / "Containerfile").read_text()
    assert "ansible_collections/modelgate/pipeline/python" in containerfile

    collections = tmp_path / "collections"
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--force", "--no-deps",
                    "-p", str(collections), str(tarball)], check=True, capture_output=True)
    installed = collections / "ansible_collections" / "modelgate" / "pipeline"
    assert (installed / "python" / "pyproject.toml").is_file(), "the tarball lacks the package"
    introspected = subprocess.run(
        [str(BIN / "python"), str(context / "_build" / "scripts" / "introspect.py"),
         "introspect", str(collections)], check=True, capture_output=True, text=True).stdout
    requirements = yaml.safe_load(introspected)
    image_dists = {_dist(r) for r in requirements["python"]}
    # what the image has besides: ansible-core and its own requirements (installed first)
    core = {"ansible-core"} | {_dist(r) for r in md.requires("ansible-core") or []
                               if "extra ==" not in r}

    by_module = md.packages_distributions()
    tools = tool_venv_dists()
    missing, in_tool_venvs = {}, {}
    for module, files in sorted(collection_imports().items()):
        dists = {d.lower().replace("_", "-") for d in by_module.get(module, [module])}
        if dists & (image_dists | core):
            continue
        if dists & tools or module in tools:
            in_tool_venvs[module] = sorted(files)
        else:
            missing[module] = sorted(files)
    assert not missing, (f"imported by the collection but not installed by the EE "
                         f"(add them to meta/requirements.txt): {missing}")
    # a tool's package is imported only inside the function that runs in its virtualenv, so
    # the module itself imports in the EE
    for module, files in in_tool_venvs.items():
        for file in files:
            assert module not in {n.split(".")[0] for n in _imports(REPO / file, True)}, (
                f"{file} imports {module} at module level; it is only in a tool virtualenv")
    assert {"torch", "transformers"} <= set(in_tool_venvs), in_tool_venvs
    # and the modelgate package's own dependencies are among them (no pins, as certification
    # asks: lower bounds only)
    pyproject = (REPO / "python" / "pyproject.toml").read_text()
    deps = ast.literal_eval(re.search(r"^dependencies = (\[.*\])$", pyproject, re.M).group(1))
    assert {_dist(d) for d in deps} <= image_dists | core
    for line in (REPO / "meta" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" not in line and "<" not in line, f"meta/requirements.txt pins {line!r}"
