"""Options shared by the modules that take a quantization recipe (preflight, quantize, ...)."""

from __future__ import annotations


class ModuleDocFragment:
    """``modelgate.pipeline.recipe`` and ``modelgate.pipeline.recipe.calibration``."""

    DOCUMENTATION = r"""
options:
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
"""

    CALIBRATION = r"""
options:
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
"""
