#!/usr/bin/python
"""Render the objects that prepare an OpenShift cluster for ModelGate: operators and their CRs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_manifests
short_description: Render the operators and custom resources that prepare an OpenShift AI cluster
description:
  - Renders, by step, the Namespace, OperatorGroup and Subscription of the Node Feature
    Discovery, NVIDIA GPU and OpenShift AI operators, then their custom resources
    (C(NodeFeatureDiscovery), C(ClusterPolicy), C(DSCInitialization) and C(DataScienceCluster)
    with KServe managed) and the project namespace.
  - An operator without a channel takes the default channel (and catalog) of its
    C(PackageManifest), given in O(package_manifests).
  - Talks to no cluster; apply the objects with M(kubernetes.core.k8s).
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  namespace:
    description: The project namespace the variants are served in.
    type: str
    required: true
  operators:
    description:
      - Per operator key (C(nfd), C(gpu), C(rhoai)), settings over the defaults
        (C(package), C(namespace), C(channel), C(source), C(source_namespace)).
    type: dict
    default: {}
  package_manifests:
    description: The PackageManifest of each operator key whose channel is empty.
    type: dict
    default: {}
  components:
    description: DataScienceCluster component management states (KServe must stay Managed).
    type: dict
    default: {}
  applications_namespace:
    description: The DSCInitialization's applications namespace.
    type: str
    default: redhat-ods-applications
  gpu_driver:
    description: Whether the GPU operator installs the driver (false where nodes have one).
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Render the cluster preparation
  modelgate.pipeline.cluster_manifests:
    namespace: modelgate
    operators:
      gpu: {channel: v26.3}
  register: cluster
"""

RETURN = r"""
operators:
  description: The operators as resolved (key, package, namespace, channel, source).
  type: list
  returned: always
missing_channels:
  description: Operator keys without a channel and without a PackageManifest (nothing rendered).
  type: list
  returned: always
steps:
  description: Objects by step (operators, nfd, gpu, rhoai, project), in the order to apply.
  type: dict
  returned: always
"""

import dataclasses

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "namespace": {"type": "str", "required": True},
            "operators": {"type": "dict", "default": {}},
            "package_manifests": {"type": "dict", "default": {}},
            "components": {"type": "dict", "default": {}},
            "applications_namespace": {"type": "str", "default": "redhat-ods-applications"},
            "gpu_driver": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )

    def action() -> dict:
        from modelgate import openshift

        p = module.params
        over = {k: dict(v or {}) for k, v in p["operators"].items()}
        for key, manifest in p["package_manifests"].items():
            if manifest and not over.get(key, {}).get("channel"):
                found = openshift.package_defaults(manifest)
                over.setdefault(key, {}).update({k: v for k, v in found.items() if v})
        ops = openshift.operators(over)
        missing = [op.key for op in ops if not op.channel]
        resolved = [dataclasses.asdict(o) for o in ops]
        if missing:  # the play reads these packages' PackageManifests, then renders
            return {"changed": False, "operators": resolved, "missing_channels": missing,
                    "steps": {}}
        steps = openshift.cluster_objects(
            namespace=p["namespace"], ops=ops, components=p["components"],
            applications_namespace=p["applications_namespace"], gpu_driver=p["gpu_driver"])
        return {"changed": False, "operators": resolved, "missing_channels": [],
                "steps": steps}

    run(module, action)


if __name__ == "__main__":
    main()
