"""The quantization job: runs inside the quantize virtualenv (torch, transformers, llmcompressor).

``python -m modelgate.quantize_job --spec spec.json`` reads a JSON spec written by
``modelgate.quantize.quantize_variant``, calibrates and compresses the model with
``llmcompressor.oneshot``, and writes a compressed-tensors checkpoint plus ``recipe.yaml`` and
``provenance.json`` into ``spec["output_dir"]``. It prints ``progress: ...`` lines on stdout,
which the runner streams to the caller.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_PROCESS_STARTED = time.monotonic()  # before the heavy imports in run(): provenance reports them

TOOL_PACKAGES = ("llmcompressor", "compressed-tensors", "transformers", "torch")


def tool_versions() -> dict[str, str]:
    """Versions of the packages that determine the quantized weights (and Python's)."""
    versions = {"python": platform.python_version()}
    for name in TOOL_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def progress(message: str) -> None:
    """One machine-readable progress line on stdout (the runner looks for 'progress: ')."""
    print(f"progress: {message}", flush=True)


def read_calibration_texts(files: list[str]) -> list[str]:
    """Samples from .jsonl (field "text") and .txt files (blank-line separated paragraphs)."""
    texts: list[str] = []
    for name in files:
        path = Path(name)
        if path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    text = json.loads(line).get("text")
                    if isinstance(text, str) and text.strip():
                        texts.append(text)
        else:
            texts += [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    return texts


def tokenize_calibration(tokenizer: Any, texts: list[str], num_samples: int,
                         max_seq_length: int) -> tuple[list[list[int]], str]:
    """Tokenize the first ``num_samples`` texts; return the token ids and their sha256.

    The digest covers exactly the token ids the calibration sees, so a tokenizer change
    shows up in provenance even when the text files are unchanged.
    """
    ids: list[list[int]] = []
    for text in texts[:num_samples]:
        tokens = tokenizer(text, truncation=True, max_length=max_seq_length,
                           add_special_tokens=True)["input_ids"]
        if tokens:
            ids.append(list(tokens))
    h = hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode())
    return ids, "sha256:" + h.hexdigest()


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder blocks (``model.model.layers`` or ``model.backbone.layers``)."""
    for attr in ("model", "backbone", "transformer"):
        inner = getattr(model, attr, None)
        layers = getattr(inner, "layers", None) if inner is not None else None
        if layers is not None:
            return list(layers)
    return []


def attach_progress_hooks(model: Any, started: float) -> list[Any]:
    """Print progress the first time each decoder block runs a calibration forward pass.

    LLM Compressor's sequential pipeline calibrates one block (subgraph) at a time, so the
    first call of block i means blocks < i are calibrated and quantized.
    """
    layers = decoder_layers(model)
    seen: set[int] = set()
    handles = []

    def make_hook(i: int) -> Any:
        def hook(_module: Any, _args: Any) -> None:
            if i not in seen:
                seen.add(i)
                progress(f"layer {i + 1}/{len(layers)} elapsed {time.monotonic() - started:.1f}s")
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(make_hook(i)))
    return handles


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Quantize per ``spec``; return the provenance written beside the weights."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    imports_s = started - _PROCESS_STARTED
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(spec.get("seed", 0)))
    progress("loading model")
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype="auto")
    recipe_yaml = spec["recipe_yaml"]
    (out / "recipe.yaml").write_text(recipe_yaml)

    calib = spec.get("calibration") or {}
    dataset = None
    token_digest = None
    num_samples = 0
    max_len = int(calib.get("max_seq_length", 512))
    if spec.get("needs_calibration"):
        texts = read_calibration_texts(calib.get("files", []))
        ids, token_digest = tokenize_calibration(
            tokenizer, texts, int(calib.get("num_samples", 64)), max_len)
        if not ids:
            raise SystemExit("calibration files hold no text samples")
        num_samples = len(ids)
        dataset = Dataset.from_dict(
            {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
        progress(f"calibration {num_samples} samples, {sum(map(len, ids))} tokens")

    # Without these kernels transformers runs Nemotron-H's reference PyTorch scan: correct,
    # but calibration of a real hybrid model becomes many times slower (field notes).
    missing = [m for m in ("mamba_ssm", "causal_conv1d") if importlib.util.find_spec(m) is None]
    hybrid = "mamba" in str(getattr(model.config, "model_type", "")) or hasattr(
        model.config, "mamba_num_heads")
    if hybrid and missing:
        progress(f"warning: {', '.join(missing)} not installed; hybrid layers calibrate "
                 "through the slow reference scan (install mamba-ssm and causal-conv1d)")
    handles = attach_progress_hooks(model, started)
    kwargs: dict[str, Any] = {"model": model, "recipe": recipe_yaml, "processor": tokenizer}
    if dataset is not None:
        kwargs.update(dataset=dataset, num_calibration_samples=num_samples,
                      max_seq_length=max_len, shuffle_calibration_samples=False)
    progress("calibrating")
    model = oneshot(**kwargs)
    for h in handles:
        h.remove()
    progress("saving")
    model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))
    # oneshot may have written its own recipe.yaml into the model dir; keep ours, the input.
    (out / "recipe.yaml").write_text(recipe_yaml)

    provenance = {
        "source_model": spec["model_dir"],
        "source_model_digest": spec["model_digest"],
        "recipe": spec["recipe_name"],
        "recipe_digest": spec["recipe_digest"],
        "calibration_digest": spec.get("calibration_digest"),
        "calibration_token_digest": token_digest,
        "calibration_samples": num_samples,
        "max_seq_length": max_len if dataset is not None else None,
        "key": spec["key"],
        "tool_versions": tool_versions(),
        "missing_kernels": missing if hybrid else [],
        "elapsed_s": round(time.monotonic() - started, 2),
        "imports_s": round(imports_s, 2),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": (int(torch.cuda.max_memory_allocated())
                           if torch.cuda.is_available() else None),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
    progress(f"done elapsed {provenance['elapsed_s']}s")
    return provenance


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``--spec spec.json`` runs the job; ``--versions`` prints tool versions."""
    parser = argparse.ArgumentParser(prog="modelgate.quantize_job")
    parser.add_argument("--spec", type=Path)
    parser.add_argument("--versions", action="store_true")
    args = parser.parse_args(argv)
    if args.versions:
        print(json.dumps(tool_versions(), sort_keys=True))
        return 0
    if not args.spec:
        parser.error("--spec is required")
    run(json.loads(args.spec.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
