#!/usr/bin/python
"""Quantize one variant with LLM Compressor, content-addressed."""

from __future__ import annotations

DOCUMENTATION = r"""
module: quantize
short_description: Quantize one model variant with LLM Compressor
description:
  - Runs the recipe in the quantize virtualenv's Python (C(python -m modelgate.quantize_job)),
    or with O(runner=podman) the same job in a container (CDI GPU devices, the model and the
    store mounted at their host paths, ModelGate's code mounted read-only).
  - Content-addressed by (source model digest, recipe, calibration set digest, tool versions);
    an existing checkpoint means C(ok) and nothing runs. Written to a temporary directory and
    renamed when complete, so an interrupted job never leaves a checkpoint that counts as done.
  - Recipe C(none) is the baseline (the source model itself).
  - Records C(<run>/<variant>/quantize.json) and copies C(recipe.yaml) and C(provenance.json)
    into C(<run>/<variant>/quantize/).
extends_documentation_fragment:
  - modelgate.pipeline.recipe
  - modelgate.pipeline.recipe.calibration
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  model:
    description: The source model directory.
    type: path
    required: true
  variant:
    description: The variant's name.
    type: str
    required: true
  store_dir:
    description: Where checkpoints live, one directory per key.
    type: path
    required: true
  python:
    description:
      - The quantize virtualenv's Python (O(runner=local)); it also runs nothing else.
      - With O(runner=podman), the Python inside O(image) is O(container_python) instead.
    type: str
    required: true
  runner:
    description: Where the job runs.
    type: str
    choices: [local, podman]
    default: local
  image:
    description: The image with python3 and llmcompressor (O(runner=podman)).
    type: str
  devices:
    description: CDI devices given to the container (O(runner=podman)).
    type: list
    elements: str
    default: [nvidia.com/gpu=all]
  podman:
    description: The podman executable (O(runner=podman)).
    type: str
    default: podman
  container_python:
    description: The Python inside O(image) (O(runner=podman)).
    type: str
    default: python3
  container_args:
    description: Extra C(podman run) arguments (O(runner=podman)), e.g. C(--ipc=host).
    type: list
    elements: str
    default: []
  model_digest:
    description:
      - The source model's tree digest (C(sha256:...)) when the model stage already computed it;
        omitted, the module hashes the model directory itself.
    type: str
  progress_file:
    description:
      - Also append the job's progress lines (C(<ISO time> layer 4/56 elapsed 21.0s)) here;
        truncated when the job starts. M(modelgate.pipeline.job_progress) reads it while the
        module runs under C(async).
    type: path
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
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

- name: The same in a container on a GPU host, in the background (see job_progress)
  modelgate.pipeline.quantize:
    model: /srv/models/nemotron-nano-9b-v2
    variant: w4a16
    recipe: w4a16
    group_size: 64
    store_dir: /var/lib/modelgate/store/checkpoints
    python: python3
    runner: podman
    image: registry.example.com/ai/llm-compressor:0.14
    devices: [nvidia.com/gpu=0]
    progress_file: /var/lib/modelgate/store/checkpoints/.progress/w4a16.log
  async: 21600
  poll: 0
  register: started
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
record:
  description:
    - The variant's quantize record as C({variant, stage, data, files}), for the controller
      to store in the run directory (M(modelgate.pipeline.run_dir) I(records)), with its
      C(quantize/recipe.yaml) and C(quantize/provenance.json); the checkpoint stays in
      O(store_dir).
  type: dict
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run
from ansible_collections.modelgate.pipeline.plugins.module_utils.recipe_spec import (
    CALIBRATION_ARGS,
    RECIPE_ARGS,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **RECIPE_ARGS,
            **CALIBRATION_ARGS,
            "model": {"type": "path", "required": True},
            "variant": {"type": "str", "required": True},
            "store_dir": {"type": "path", "required": True},
            "python": {"type": "str", "required": True},
            "runner": {"type": "str", "choices": ["local", "podman"], "default": "local"},
            "image": {"type": "str"},
            "devices": {"type": "list", "elements": "str", "default": ["nvidia.com/gpu=all"]},
            "podman": {"type": "str", "default": "podman"},
            "container_python": {"type": "str", "default": "python3"},
            "container_args": {"type": "list", "elements": "str", "default": []},
            "progress_file": {"type": "path"},
            "model_digest": {"type": "str"},
        },
        required_if=[("runner", "podman", ["image"])],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.quantize import quantize_stage
        from modelgate.recipes import build_recipe

        p = module.params
        return quantize_stage(
            model=p["model"], variant=p["variant"],
            recipe=build_recipe(p["recipe"], group_size=p["group_size"], ignore=p["ignore"]),
            store_dir=Path(p["store_dir"]),
            calibration_files=[Path(f) for f in p["calibration_files"]],
            num_samples=p["num_samples"], max_seq_length=p["max_seq_length"],
            python=p["python"], check_mode=module.check_mode,
            progress_file=Path(p["progress_file"]) if p["progress_file"] else None,
            model_digest=p["model_digest"] or None, runner=p["runner"],
            podman={"image": p["image"], "devices": p["devices"], "podman": p["podman"],
                    "python": p["container_python"], "extra_args": p["container_args"]},
        )

    run(module, action)


if __name__ == "__main__":
    main()
