"""Argument specs shared by the modules that take a quantization recipe.

They match the doc fragments in plugins/doc_fragments/recipe.py, option for option.
"""

from __future__ import annotations

from typing import Any

RECIPE_ARGS: dict[str, dict[str, Any]] = {
    "recipe": {"type": "str", "required": True},
    "group_size": {"type": "int"},
    "ignore": {"type": "list", "elements": "str"},
}

CALIBRATION_ARGS: dict[str, dict[str, Any]] = {
    "calibration_files": {"type": "list", "elements": "path", "default": []},
    "num_samples": {"type": "int", "default": 64},
    "max_seq_length": {"type": "int", "default": 512},
}
