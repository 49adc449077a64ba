"""The quantize stage: content-addressed, resumable-by-restart quantization of one variant.

``quantize_variant`` computes the variant's key from (source model digest, recipe digest,
calibration digest, tool versions). When ``store/<key>/`` exists, the variant is reported
unchanged and nothing runs. Otherwise the job (``modelgate.quantize_job``) runs in the quantize
virtualenv's Python, writes into ``store/.tmp-<key>-<pid>/`` and is renamed into place only when
complete, so an interrupted run never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.digest import sha256_file, sha256_json, tree_digest
from modelgate.errors import ModelGateError, ToolError
from modelgate.process import log_tail
from modelgate.recipes import Recipe, build_recipe
from modelgate.rundir import stage_record

# The job imports only modelgate.quantize_job from this package; put the package's parent
# on PYTHONPATH so it runs even where modelgate is not installed in the quantize venv.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_SUFFIXES = (".txt", ".jsonl")


@dataclass
class CalibrationSpec:
    """The calibration set: local text files, how many samples, how long each may be."""

    files: list[Path]
    num_samples: int = 64
    max_seq_length: int = 512

    def validate(self) -> None:
        """Raise ModelGateError naming the bad input."""
        if not self.files:
            raise ModelGateError("no calibration files given", field="calibration",
                                 fix="give one or more local .txt or .jsonl files")
        for f in self.files:
            if not Path(f).is_file():
                raise ModelGateError(f"calibration file {f} does not exist",
                                     field="calibration", fix="give an existing file")
            if Path(f).suffix not in CALIBRATION_SUFFIXES:
                raise ModelGateError(f"calibration file {f} is not .txt or .jsonl",
                                     field="calibration",
                                     fix='use plain text or JSON lines with a "text" field')
        if self.num_samples < 1 or self.max_seq_length < 8:
            raise ModelGateError("num_samples must be >= 1 and max_seq_length >= 8",
                                 field="calibration", fix="e.g. 64 samples of 512 tokens")

    @property
    def digest(self) -> str:
        """Digest of the file contents (not paths) and the sampling parameters."""
        return "sha256:" + sha256_json({
            "files": sorted(sha256_file(Path(f)) for f in self.files),
            "num_samples": self.num_samples, "max_seq_length": self.max_seq_length,
        })

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the job spec."""
        return {"files": [str(Path(f).resolve()) for f in self.files],
                "num_samples": self.num_samples, "max_seq_length": self.max_seq_length}


@dataclass
class QuantizeResult:
    """Where the variant's checkpoint is, its key, and whether this call built it."""

    path: str
    key: str
    changed: bool
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output."""
        return asdict(self)


def quantization_key(model_digest: str, recipe: Recipe, calibration_digest: str | None,
                     tool_versions: dict[str, str]) -> str:
    """The content address of a quantized checkpoint (hex sha256).

    Anything that changes the weights changes the key: the source weights, the recipe, the
    calibration data and the versions of the tools that compute them.
    """
    return sha256_json({
        "model": model_digest, "recipe": recipe.digest,
        "calibration": calibration_digest if recipe.needs_calibration else None,
        "tools": dict(sorted(tool_versions.items())),
    })


def model_digest(model_dir: Path) -> str:
    """Digest of a model directory's files (weights, config, tokenizer)."""
    if not (model_dir / "config.json").is_file():
        raise ModelGateError(f"{model_dir} has no config.json", field="model",
                             fix="give a Hugging Face model directory")
    return tree_digest(model_dir)


def _job_env() -> dict[str, str]:
    pythonpath = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": str(_PACKAGE_ROOT) + (os.pathsep + pythonpath if pythonpath else ""),
            "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def probe_tool_versions(python: str) -> dict[str, str]:
    """Ask the quantize virtualenv's Python for its tool versions."""
    if not Path(python).exists():
        raise ModelGateError(f"python {python} does not exist", field="python",
                             fix="give the quantize virtualenv's bin/python")
    proc = subprocess.run([python, "-m", "modelgate.quantize_job", "--versions"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **_job_env()})
    if proc.returncode != 0:
        raise ToolError(f"{python} could not report tool versions: {proc.stderr[-2000:]}",
                        field="python", fix="install llmcompressor in that virtualenv")
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    if versions.get("llmcompressor") == "absent":
        raise ModelGateError(f"llmcompressor is not installed for {python}", field="python",
                             fix="pip install llmcompressor into the quantize virtualenv")
    return versions


@contextlib.contextmanager
def _key_lock(store: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock per key so two runs never build the same variant at once."""
    lock_path = store / f".lock-{key}"
    with lock_path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(path: Path) -> bool:
    return (path / "provenance.json").is_file() and (path / "config.json").is_file()


def _remove_stale(store: Path, key: str) -> list[str]:
    """Remove leftovers of interrupted runs of this key (we hold its lock)."""
    removed = []
    for tmp in store.glob(f".tmp-{key}-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp.name)
    return removed


def _die_with_parent() -> None:
    """In the job's process: receive SIGTERM when the runner dies, even by SIGKILL.

    Ansible's async timeout SIGKILLs the module's process group; the job runs in its own
    session (so Ctrl-C reaches the runner first), and would otherwise be orphaned.
    """
    with contextlib.suppress(Exception):  # Linux only; elsewhere the runner's handler remains
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM


def _stream_job(argv: list[str], log_path: Path, progress_log: Path,
                progress_cb: Callable[[str], None] | None,
                progress_file: Path | None = None) -> int:
    """Run the job, copying all output to ``log_path`` and progress lines to the callback.

    Progress lines go to ``progress_log`` (kept beside the checkpoint) and, when given, to
    ``progress_file``, a fixed path a poller outside this process can read while the job runs.
    ``argv`` may be ``podman run`` (the podman runner): the one podman call that does not go
    through ``container_tools.run_container_tool``, because this job streams its output line by
    line for hours and is killed with its runner, where that runs a tool to completion.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("w"))
        plogs = [stack.enter_context(progress_log.open("w"))]
        if progress_file is not None:
            progress_file.parent.mkdir(parents=True, exist_ok=True)
            plogs.append(stack.enter_context(progress_file.open("a")))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, **_job_env()},
                                start_new_session=True, preexec_fn=_die_with_parent)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                # tqdm (on the merged stderr) writes without newlines, so a progress line
                # can arrive behind a progress bar: look for the marker anywhere.
                at = line.find("progress: ")
                if at >= 0:
                    msg = line[at + len("progress: "):].rstrip("\n")
                    for plog in plogs:
                        plog.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
                        plog.flush()
                    if progress_cb is not None:
                        progress_cb(msg)
            return proc.wait()
        except BaseException:
            # interrupted (Ctrl-C, Ansible timeout): stop the job's whole process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            proc.wait()
            raise


def quantize_variant(model_dir: Path | str, store_dir: Path | str, recipe: Recipe,
                     calibration: CalibrationSpec | None, python: str,
                     progress_cb: Callable[[str], None] | None = None,
                     check_mode: bool = False, *,
                     progress_file: Path | None = None,
                     tool_versions: dict[str, str] | None = None,
                     job_argv: Callable[[Path], list[str]] | None = None,
                     source_digest: str | None = None) -> QuantizeResult:
    """Build (or find) the variant of ``model_dir`` quantized by ``recipe``.

    Returns ``changed=False`` without running anything when ``store_dir/<key>/`` is complete.
    For recipe ``none`` the variant is the source model itself (key = model digest).
    In ``check_mode`` nothing is written; ``changed`` says whether a run would happen.

    ``progress_file`` also receives the job's progress lines (appended, timestamped).
    ``tool_versions`` replaces probing ``python`` (a container runner probes its image), and
    ``job_argv(spec_path)`` replaces ``python -m modelgate.quantize_job --spec spec_path``
    (e.g. the same command inside ``podman run``, with the store mounted at the same path).
    ``source_digest`` is the model's tree digest when the caller already has it (the model
    stage computes it); hashing a 9B model's 18 GB again costs ~15 s on an H200 host.
    """
    model_dir = Path(model_dir).resolve()
    m_digest = source_digest or model_digest(model_dir)
    if recipe.is_baseline:
        return QuantizeResult(str(model_dir), m_digest.removeprefix("sha256:"), False,
                              {"source_model_digest": m_digest, "recipe": "none"})
    if recipe.needs_calibration:
        if calibration is None:
            raise ModelGateError(f"recipe {recipe.name} needs calibration data",
                                 field="calibration", fix="give --calibration FILE")
        calibration.validate()
    c_digest = calibration.digest if (calibration and recipe.needs_calibration) else None
    versions = tool_versions if tool_versions is not None else probe_tool_versions(python)
    key = quantization_key(m_digest, recipe, c_digest, versions)
    store = Path(store_dir).resolve()
    final = store / key
    if _complete(final):
        return QuantizeResult(str(final), key, False,
                              json.loads((final / "provenance.json").read_text()))
    if check_mode:
        return QuantizeResult(str(final), key, True, {})
    store.mkdir(parents=True, exist_ok=True)
    with _key_lock(store, key):
        if _complete(final):  # another run finished it while we waited for the lock
            return QuantizeResult(str(final), key, False,
                                  json.loads((final / "provenance.json").read_text()))
        _remove_stale(store, key)
        if final.exists():  # incomplete final dir (should not happen; never trust it)
            shutil.rmtree(final)
        tmp = store / f".tmp-{key}-{os.getpid()}"
        tmp.mkdir()
        spec = {
            "model_dir": str(model_dir), "model_digest": m_digest, "output_dir": str(tmp),
            "recipe_name": recipe.name, "recipe_digest": recipe.digest,
            "recipe_yaml": recipe.to_yaml(), "needs_calibration": recipe.needs_calibration,
            "calibration": calibration.to_dict() if calibration else None,
            "calibration_digest": c_digest, "key": key,
        }
        spec_path = store / f".spec-{key}.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        log_path = store / ".logs" / f"{key}.log"
        argv = (job_argv(spec_path) if job_argv is not None
                else [python, "-m", "modelgate.quantize_job", "--spec", str(spec_path)])
        try:
            rc = _stream_job(argv, log_path, tmp / "progress.log", progress_cb, progress_file)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if rc != 0 or not _complete(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ToolError(
                f"quantization job failed (exit {rc}):\n{log_tail(log_path, 40)}",
                field="recipe", fix=f"see the full log: {log_path}")
        spec_path.unlink(missing_ok=True)
        os.replace(tmp, final)  # atomic on one filesystem: the checkpoint appears complete
    provenance = json.loads((final / "provenance.json").read_text())
    return QuantizeResult(str(final), key, True, provenance)


# ------------------------------------------------------------------------------- the stage


def default_calibration(store_dir: Path, recipe: Recipe, files: list[Path],
                        check_mode: bool = False) -> list[Path]:
    """The calibration files: the given ones, or the built-in corpus when a recipe needs one.

    The corpus lives beside the checkpoint store (``<store>/../calibration/``); in check mode
    a missing corpus is written to a temporary file, only to compute the key.
    """
    import tempfile

    from modelgate.model_source import write_corpus

    if files or not recipe.needs_calibration:
        return list(files)
    corpus = store_dir.parent / "calibration" / "modelgate-corpus.jsonl"
    if not corpus.exists():
        corpus = write_corpus(Path(tempfile.mkdtemp()) / corpus.name if check_mode else corpus)
    return [corpus]


def quantize_stage(*, model: Path | str, variant: str, recipe: Recipe, store_dir: Path,
                   calibration_files: list[Path], num_samples: int, max_seq_length: int,
                   python: str, check_mode: bool = False, progress_file: Path | None = None,
                   model_digest: str | None = None, runner: str = "local",
                   podman: dict[str, Any] | None = None,
                   progress_cb: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The quantize stage for one variant, as the module, the CLI and the bench run it.

    Returns the checkpoint (``path``, ``key``, ``changed``, ``provenance``) and the variant's
    run ``record`` (see :func:`quantize_record`), which the caller, the controller, stores in
    the run directory; the checkpoint itself stays in the store on this host.
    ``podman`` holds the container runner's settings (``image``, ``devices``, ``podman``,
    ``python``, ``extra_args``) when ``runner`` is ``podman``.
    """
    files = default_calibration(store_dir, recipe, list(calibration_files), check_mode)
    calibration = CalibrationSpec(files, num_samples, max_seq_length)
    if progress_file is not None and not check_mode:
        progress_file.parent.mkdir(parents=True, exist_ok=True)
        progress_file.write_text("")  # the poller must not show the previous run's lines
    runner_kwargs: dict[str, Any] = {}
    if runner == "podman":
        from modelgate.quantize_runners import (
            PodmanRunner,
            podman_job_argv,
            podman_mounts,
            probe_podman_tool_versions,
        )

        opts = dict(podman or {})
        container = PodmanRunner(image=opts["image"], devices=tuple(opts.get("devices") or ()),
                                 podman=opts.get("podman") or "podman",
                                 python=opts.get("python") or "python3",
                                 extra_args=tuple(opts.get("extra_args") or ()))
        container.validate()
        volumes = podman_mounts(Path(model), store_dir, files)
        runner_kwargs = {
            "tool_versions": probe_podman_tool_versions(container),
            "job_argv": lambda spec_path: podman_job_argv(container, spec_path, volumes),
        }
    elif runner != "local":
        raise ModelGateError(f"unknown quantize runner {runner!r}", field="quantize_runner",
                             fix="use local or podman (kubernetes has its own module)")
    result = quantize_variant(model, store_dir, recipe, calibration, python,
                              progress_cb=progress_cb, check_mode=check_mode,
                              progress_file=progress_file, source_digest=model_digest,
                              **runner_kwargs)
    return {**result.to_dict(), **quantize_record(variant, recipe, result)}


def quantize_record(variant: str, recipe: Recipe, result: QuantizeResult) -> dict[str, Any]:
    """The run directory's view of a checkpoint, as ``{"record": {variant, stage, data, files}}``.

    That is the entry :func:`modelgate.rundir.store_records` (the ``run_dir`` module's
    ``records``) takes: ``<variant>/quantize.json`` and its recipe and provenance beside it.
    """
    return {"record": stage_record(variant, "quantize", {
        "variant": variant, "recipe": recipe.name, "path": result.path, "key": result.key,
        "built_by_this_run": result.changed, "provenance": result.provenance,
    }, files={"quantize/recipe.yaml": recipe.to_yaml(),
              "quantize/provenance.json": result.provenance})}


# ------------------------------------------------------------------------------------- CLI


def register_cli(subparsers: Any) -> None:
    """Add ``modelgate quantize``."""
    p = subparsers.add_parser("quantize", help="quantize a model with LLM Compressor "
                              "(content-addressed; a second run changes nothing)")
    p.add_argument("--model", required=True, type=Path, help="source model directory")
    p.add_argument("--recipe", required=True,
                   help="w4a16 | fp8-dynamic | w8a8-int8 | none | path to a recipe YAML")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--ignore", nargs="*", default=None, metavar="PATTERN",
                   help="module names / re: patterns to leave unquantized (replaces defaults)")
    p.add_argument("--store", required=True, type=Path, help="checkpoint store directory")
    p.add_argument("--calibration", nargs="*", type=Path, default=[],
                   help="local .txt / .jsonl calibration files (default: the built-in corpus)")
    p.add_argument("--variant", default=None, help="the variant's name (default: the recipe's)")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--python", required=True, help="the quantize virtualenv's python")
    p.add_argument("--check", action="store_true", help="report what would change only")
    p.set_defaults(func=_cli_quantize)


def _cli_quantize(args: argparse.Namespace) -> int:
    import sys

    from modelgate.cli import emit

    recipe = build_recipe(args.recipe, group_size=args.group_size, ignore=args.ignore)

    def on_progress(msg: str) -> None:
        print(f"progress: {msg}", file=sys.stderr, flush=True)

    emit(quantize_stage(model=args.model, variant=args.variant or recipe.name, recipe=recipe,
                        store_dir=args.store, calibration_files=list(args.calibration),
                        num_samples=args.num_samples, max_seq_length=args.max_seq_length,
                        python=args.python, check_mode=args.check, progress_cb=on_progress))
    return 0
