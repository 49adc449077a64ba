#!/usr/bin/python
"""Build a modelcar image of a checkpoint, push it, verify it; or take /models back out."""

from __future__ import annotations

DOCUMENTATION = r"""
module: modelcar
short_description: Build, push and verify a modelcar image, or extract one
description:
  - C(state=present) builds a modelcar (the checkpoint under C(/models) on a base image with
    C(sh)) reproducibly into an OCI layout, one layer per weight shard, with OCI and provenance
    labels; pushes it (nothing is sent when the registry's tag already has the same digest) and
    pulls the manifest back to compare every file's digest with the checkpoint.
  - C(state=extracted) copies the image from its registry and unpacks C(/models) into C(dest),
    so a local server serves exactly what was pushed.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  state:
    description: What to do.
    type: str
    choices: [present, extracted]
    default: present
  checkpoint:
    description:
      - The checkpoint directory on this host (C(state=present)), the path the variant's
        quantize record names.
    type: path
  variant:
    description: The variant's name (for the record and the title label).
    type: str
    default: ""
  layout_dir:
    description: Where OCI layouts are kept (the base and one per checkpoint).
    type: path
  base:
    description: C(busybox) (built offline from the host's busybox-static) or an image reference.
    type: str
    default: busybox
  registry:
    description: Registry host:port.
    type: str
  repository:
    description: Repository in the registry.
    type: str
  tag:
    description: Tag; default derives from the checkpoint digest.
    type: str
  ref:
    description: Full image reference (C(state=extracted)).
    type: str
  dest:
    description: Where to unpack C(/models) (C(state=extracted)).
    type: path
  username:
    description: Registry user.
    type: str
    default: ""
  password:
    description: Registry password or token.
    type: str
    default: ""
  tls_verify:
    description: Verify the registry's TLS certificate.
    type: bool
    default: true
  provenance:
    description: Provenance for the labels (source model, revision, recipe hash, ...).
    type: dict
    default: {}
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
    details: Reports whether a push or an extraction would happen; builds and sends nothing.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Modelcar of the W4A16 checkpoint
  modelgate.pipeline.modelcar:
    checkpoint: /srv/modelgate/store/checkpoints/abc
    variant: w4a16
    layout_dir: /srv/modelgate/store/oci
    registry: quay.example.com
    repository: acme/nemotron-nano-9b-v2
    username: "{{ registry_user }}"
    password: "{{ registry_password }}"
"""

RETURN = r"""
ref:
  description: The pushed reference, by digest.
  type: str
  returned: state=present
digest:
  description: The manifest digest.
  type: str
  returned: state=present
checkpoint_bytes_read:
  description: Checkpoint bytes hashed by this call (0 when their digests are remembered).
  type: int
  returned: state=present, not in check mode
record:
  description:
    - The variant's modelcar record as C({variant, stage, data}), for the controller to store
      in the run directory (M(modelgate.pipeline.run_dir) I(records)).
  type: dict
  returned: state=present, not in check mode
path:
  description: The unpacked model directory.
  type: str
  returned: state=extracted
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "extracted"], "default": "present"},
            "checkpoint": {"type": "path"},
            "variant": {"type": "str", "default": ""},
            "layout_dir": {"type": "path"},
            "base": {"type": "str", "default": "busybox"},
            "registry": {"type": "str"},
            "repository": {"type": "str"},
            "tag": {"type": "str"},
            "ref": {"type": "str"},
            "dest": {"type": "path"},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "tls_verify": {"type": "bool", "default": True},
            "provenance": {"type": "dict", "default": {}},
        },
        required_if=[
            ("state", "present", ["checkpoint", "layout_dir", "registry", "repository"]),
            ("state", "extracted", ["ref", "dest"]),
        ],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate import modelcar

        p = module.params
        creds = {"username": p["username"], "password": p["password"],
                 "tls_verify": p["tls_verify"], "check_mode": module.check_mode}
        if p["state"] == "extracted":
            return modelcar.extract_stage(ref=p["ref"], dest=Path(p["dest"]), **creds)
        return modelcar.publish_modelcar(
            checkpoint=Path(p["checkpoint"]), variant=p["variant"],
            layout_dir=Path(p["layout_dir"]), base=p["base"], registry=p["registry"],
            repository=p["repository"], tag=p["tag"], provenance=p["provenance"], **creds)

    run(module, action)


if __name__ == "__main__":
    main()
