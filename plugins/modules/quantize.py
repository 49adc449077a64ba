#!/usr/bin/python
"""Quantize one variant with LLM Compressor, content-addressed."""

from __future__ import annotations

DOCUMENTATION = r"""
module: quantize
short_description: Quantize one model variant with LLM Compressor
description:
  - Runs the recipe in the quantize virtualenv's Python (C(python -m modelgate.quantize_job)).
  - Content-addressed by (source model digest, recipe, calibration set digest, tool versions);
    an existing checkpoint means C(ok) and nothing runs. Written to a temporary directory and
    renamed when complete, so an interrupted job never leaves a checkpoint that counts as done.
  - Recipe C(none) is the baseline: the source model itself.
  - Records C(<run>/<variant>/quantize.json) and copies C(recipe.yaml) and C(provenance.json)
    into C(<run>/<variant>/quantize/).
version_added: "0.1.0"
author: ModelGate
options:
  model:
    description: The source model directory.
    type: path
    required: true
  variant:
    description: The variant's name.
    type: str
    required: true
  recipe:
    description: A preset (w4a16, fp8-dynamic, w8a8-int8, none) or a recipe YAML file.
    type: str
    required: true
  group_size:
    description: Group size for group-quantized recipes.
    type: int
  ignore:
    description: Layer patterns kept in full precision (replaces the default list).
    type: list
    elements: str
  store_dir:
    description: Where checkpoints live, one directory per key.
    type: path
    required: true
  calibration_files:
    description: Local .txt/.jsonl calibration files; empty = the built-in local corpus.
    type: list
    elements: path
    default: []
  num_samples:
    description: Calibration samples.
    type: int
    default: 64
  max_seq_length:
    description: Calibration sequence length in tokens.
    type: int
    default: 512
  python:
    description: The quantize virtualenv's Python.
    type: str
    required: true
  run_path:
    description: The run directory to record into.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: W4A16 variant
  modelgate.pipeline.quantize:
    model: /srv/models/tiny
    variant: w4a16
    recipe: w4a16
    group_size: 64
    store_dir: /srv/modelgate/store/checkpoints
    python: /srv/modelgate/venvs/quantize/bin/python
"""

RETURN = r"""
path:
  description: The variant's checkpoint directory.
  type: str
  returned: success
key:
  description: The checkpoint's content address.
  type: str
  returned: success
provenance:
  description: Source model digest, recipe digest, calibration digest, tool versions, timings.
  type: dict
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "model": {"type": "path", "required": True},
            "variant": {"type": "str", "required": True},
            "recipe": {"type": "str", "required": True},
            "group_size": {"type": "int"},
            "ignore": {"type": "list", "elements": "str"},
            "store_dir": {"type": "path", "required": True},
            "calibration_files": {"type": "list", "elements": "path", "default": []},
            "num_samples": {"type": "int", "default": 64},
            "max_seq_length": {"type": "int", "default": 512},
            "python": {"type": "str", "required": True},
            "run_path": {"type": "path"},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        import shutil
        from pathlib import Path

        from modelgate.model_source import write_corpus
        from modelgate.quantize import CalibrationSpec, quantize_variant
        from modelgate.recipes import build_recipe
        from modelgate.rundir import RunDir

        p = module.params
        store = Path(p["store_dir"])
        recipe = build_recipe(p["recipe"], group_size=p["group_size"], ignore=p["ignore"])
        files = [Path(f) for f in p["calibration_files"]]
        if not files and recipe.needs_calibration:
            corpus = store.parent / "calibration" / "modelgate-corpus.jsonl"
            if not corpus.exists() and not module.check_mode:
                write_corpus(corpus)
            files = [corpus]
        calibration = CalibrationSpec(files, p["num_samples"], p["max_seq_length"])
        result = quantize_variant(p["model"], store, recipe, calibration, p["python"],
                                  check_mode=module.check_mode)
        out = result.to_dict()
        if p["run_path"] and not module.check_mode:
            run_dir = RunDir(Path(p["run_path"]))
            qdir = run_dir.variant_dir(p["variant"]) / "quantize"
            qdir.mkdir(exist_ok=True)
            ckpt = Path(result.path)
            for name in ("recipe.yaml", "provenance.json"):
                if (ckpt / name).is_file():
                    shutil.copy2(ckpt / name, qdir / name)
            run_dir.record(p["variant"], "quantize", {
                "variant": p["variant"], "recipe": recipe.name, "path": result.path,
                "key": result.key, "built_by_this_run": result.changed,
                "provenance": result.provenance,
            })
        return out

    run(module, action)


if __name__ == "__main__":
    main()
