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
author: ModelGate
options:
  state:
    description: What to do.
    type: str
    choices: [present, extracted]
    default: present
  checkpoint:
    description:
      - The checkpoint directory (C(state=present)); default, the path the run's quantize
        record names for C(variant).
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
    no_log: true
  tls_verify:
    description: Verify the registry's TLS certificate.
    type: bool
    default: true
  provenance:
    description: Provenance for the labels (source model, revision, recipe hash, ...).
    type: dict
    default: {}
  run_path:
    description: Run directory to record C(<variant>/modelcar.json) into.
    type: path
attributes:
  check_mode:
    support: full
    details: Reports whether a push or an extraction would happen; builds and sends nothing.
  diff_mode:
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
            "run_path": {"type": "path"},
        },
        required_if=[
            ("state", "present", ["layout_dir", "registry", "repository"]),
            ("state", "extracted", ["ref", "dest"]),
        ],
        required_one_of=[("checkpoint", "run_path", "ref")],
        supports_check_mode=True,
    )

    def action() -> dict:
        from pathlib import Path

        from modelgate import modelcar
        from modelgate.digest import tree_digest
        from modelgate.rundir import RunDir

        p = module.params
        creds = {"username": p["username"] or None, "password": p["password"] or None}
        if p["state"] == "extracted":
            dest = Path(p["dest"])
            before = modelcar.extracted_digest(dest)
            if module.check_mode:
                remote = modelcar.remote_digest(p["ref"], tls_verify=p["tls_verify"], **creds)
                return {"changed": before != remote, "path": str(dest), "digest": remote}
            path = modelcar.extract_models(p["ref"], dest, tls_verify=p["tls_verify"], **creds)
            after = modelcar.extracted_digest(dest)
            return {"changed": before != after, "path": str(path), "digest": after}

        from modelgate.registry import check_reachable

        check_reachable(p["registry"], tls_verify=p["tls_verify"])  # before any build
        run_dir = RunDir(Path(p["run_path"])) if p["run_path"] and p["variant"] else None
        if p["checkpoint"]:
            checkpoint = Path(p["checkpoint"])
        else:
            if run_dir is None:
                module.fail_json(msg="give checkpoint, or run_path and variant")
            if module.check_mode and not (run_dir.path / p["variant"] / "quantize.json").exists():
                return {"changed": True, "msg": f"{p['variant']} is not quantized yet: "
                                                "its modelcar would be built and pushed"}
            checkpoint = Path(run_dir.read(p["variant"], "quantize")["path"])
        layouts = Path(p["layout_dir"])
        if p["base"] == "busybox":
            base_layout = layouts / "base-busybox"
            modelcar.build_busybox_base(base_layout)
        else:
            base_layout = layouts / ("base-" + p["base"].replace("/", "_").replace(":", "_")
                                     .replace("@", "_"))
            modelcar.pull_base(p["base"], base_layout, tls_verify=p["tls_verify"], **creds)
        ckpt_digest = tree_digest(checkpoint)
        prov = modelcar.Provenance.from_dict({
            "title": p["variant"] or checkpoint.name, "checkpoint_digest": ckpt_digest,
            **p["provenance"],
        })
        tag = p["tag"] or modelcar.image_tag(ckpt_digest)
        ref = f"{p['registry']}/{p['repository']}:{tag}"
        if module.check_mode:
            remote = modelcar.remote_digest(ref, tls_verify=p["tls_verify"], **creds)
            local = None
            if (layouts / tag / "index.json").exists():
                local = modelcar.read_layout_manifest(layouts / tag)[0]
            return {"changed": remote is None or remote != local, "ref": ref, "digest": local}
        image = modelcar.build_modelcar(checkpoint, base_layout, layouts / tag,
                                        labels=modelcar.provenance_labels(prov))
        pushed = modelcar.push_modelcar(layouts / tag, ref, tls_verify=p["tls_verify"], **creds)
        verified = modelcar.verify_pushed(ref, checkpoint, tls_verify=p["tls_verify"], **creds)
        if not verified.ok:
            module.fail_json(msg=f"the pushed image {ref} does not carry the checkpoint: "
                                 f"mismatched {verified.mismatched}, missing {verified.missing}",
                             verify=verified.to_dict())
        record = {
            "variant": p["variant"], "ref": ref,
            "ref_by_digest": f"{p['registry']}/{p['repository']}@{pushed.digest}",
            "digest": pushed.digest, "tag": tag, "checkpoint_digest": ckpt_digest,
            "labels": image.labels,
            "layers": [{"digest": lyr.digest, "size": lyr.size, "files": lyr.files}
                       for lyr in image.layers],
            "push": pushed.to_dict(), "verify": verified.to_dict(),
        }
        if run_dir is not None:
            run_dir.record(p["variant"], "modelcar", record)
        return {"changed": image.changed or pushed.changed, **record}

    run(module, action)


if __name__ == "__main__":
    main()
