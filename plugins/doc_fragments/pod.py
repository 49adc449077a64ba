"""Options shared by the modules that render pods for a cluster (Jobs, predictors)."""

from __future__ import annotations


class ModuleDocFragment:
    """``modelgate.pipeline.pod``: where the pods go."""

    DOCUMENTATION = r"""
options:
  tolerations:
    description: Pod tolerations (e.g. the GPU nodes' taint).
    type: list
    elements: dict
    default: []
  node_selector:
    description: Pod node selector.
    type: dict
    default: {}
"""
