#!/usr/bin/python
"""Resolve the run's source model: generated, a local directory, or a hub id."""

from __future__ import annotations

DOCUMENTATION = r"""
module: model_source
short_description: Make a run's source model available and digest it
description:
  - C(generated) builds the tiny Nemotron-H hybrid model once, content-addressed, in the store
    - its last block and output head trained (fixed seeds, deterministic) on the local
    C(modelgate_choice) task, so accuracy and fidelity checks measure something - and a
    tokenizer trained on local text. The content key is the spec and training recipe and the
    generator's tool versions, computed without training (check mode).
  - With O(config), C(generated) builds random weights with the exact geometry of a published
    config.json instead (a WordLevel tokenizer covering its vocabulary), content-addressed by
    the config's digest, O(seed) and the generator's tool versions.
  - C(local) digests an existing checkpoint directory.
  - C(hub) downloads a hub id where the network allows.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  source:
    description: Where the model comes from.
    type: str
    choices: [generated, local, hub]
    default: generated
  name:
    description: The model's display name.
    type: str
    default: ""
  path:
    description: The checkpoint directory, for C(source=local).
    type: path
  hub_id:
    description: The hub id, for C(source=hub).
    type: str
    default: ""
  revision:
    description: The hub revision.
    type: str
    default: ""
  config:
    description:
      - A published config.json, for C(source=generated) - the generated model has its exact
        geometry and random weights (for latency and memory work, where values do not matter).
    type: path
  seed:
    description: The random weights' seed, for C(source=generated) with O(config).
    type: int
    default: 0
  store_dir:
    description: The content-addressed store (generated and downloaded models live here).
    type: path
    required: true
  python:
    description: A Python with torch and transformers (the quantize virtualenv's).
    type: str
    default: ""
  hf_token:
    description: A hub token, for gated models.
    type: str
    default: ""
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: partial
    details: A model that must be generated or downloaded is reported as a change, not made.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Random weights with NVIDIA-Nemotron-Nano-9B-v2's geometry
  modelgate.pipeline.model_source:
    source: generated
    config: "{{ playbook_dir }}/../bench/configs/nvidia-nemotron-nano-9b-v2.config.json"
    store_dir: /srv/modelgate/store
    python: /srv/modelgate/venvs/quantize/bin/python

- name: The tiny generated model
  modelgate.pipeline.model_source:
    source: generated
    store_dir: /srv/modelgate/store
    python: /srv/modelgate/venvs/quantize/bin/python
"""

RETURN = r"""
path:
  description: The model directory.
  type: str
  returned: success
digest:
  description: The model's content digest (sha256 over every file).
  type: str
  returned: success
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "str", "choices": ["generated", "local", "hub"],
                       "default": "generated"},
            "name": {"type": "str", "default": ""},
            "path": {"type": "path"},
            "hub_id": {"type": "str", "default": ""},
            "revision": {"type": "str", "default": ""},
            "config": {"type": "path"},
            "seed": {"type": "int", "default": 0},
            "store_dir": {"type": "path", "required": True},
            "python": {"type": "str", "default": ""},
            "hf_token": {"type": "str", "default": "", "no_log": True},
        },
        required_if=[("source", "local", ["path"]), ("source", "hub", ["hub_id"])],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate.model_source import (
            ConfigModelSpec,
            TinyHybridSpec,
            probe_generator_versions,
            resolve_model,
            tiny_hybrid_key,
        )

        p = module.params
        if p["hf_token"]:
            os.environ["HF_TOKEN"] = p["hf_token"]
        if module.check_mode and p["source"] == "generated":
            key = (ConfigModelSpec(str(Path(p["config"]).resolve()), p["seed"]).key(
                probe_generator_versions(p["python"])) if p["config"] and p["python"]
                else tiny_hybrid_key(TinyHybridSpec(), p["python"]))
            dest = Path(p["store_dir"]) / "models" / f"generated-{key}"
            if not (dest / "modelgate-generated.json").is_file():
                return {"changed": True, "path": str(dest), "digest": ""}
        model = resolve_model(
            p["source"], store_dir=Path(p["store_dir"]), name=p["name"], path=p["path"] or "",
            hub_id=p["hub_id"], revision=p["revision"], generator_python=p["python"],
            config=p["config"] or "", seed=p["seed"],
        )
        return model.to_dict()

    run(module, action)


if __name__ == "__main__":
    main()
