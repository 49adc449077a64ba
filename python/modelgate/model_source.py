"""Model sources: where a run's source checkpoint comes from.

Three kinds plug into one interface, :func:`resolve_model`, which returns a :class:`SourceModel`
(a local directory and its content digest):

- ``generated``: a tiny Nemotron-H hybrid (Mamba-2 + attention + MLP blocks) that has learned
  the ``modelgate_choice`` task (see :func:`choice_questions`), and a byte-level BPE tokenizer
  trained on local text. Its body (Mamba, attention, the first MLPs) keeps random weights from
  a fixed seed; the last MLP block, the final norm and the output head are trained with AdamW
  on features the body computes once, because transformers' reference Mamba scan (no
  ``mamba_ssm`` on a CPU) makes back-propagating through the body cost seconds per step on 2
  cores. Deterministic (fixed seeds, deterministic algorithms, a fixed thread count), offline,
  and shaped so that vLLM CPU's W4A16 kernel accepts every quantized layer (field notes: output
  sizes a multiple of 32; input sizes divisible by the group size). Given a published
  ``config.json`` instead (``config``), it builds random weights with exactly that geometry
  (e.g. NVIDIA-Nemotron-Nano-9B-v2's, for latency and memory work where the weights' values do
  not matter) and a WordLevel tokenizer covering the whole vocabulary.
- ``local``: an existing checkpoint directory.
- ``hub``: a Hugging Face hub id, downloaded where the network allows.

Generation needs torch, transformers and tokenizers, so it runs in the quantize virtualenv
(``python -m modelgate.model_source generate``); resolving and digesting needs nothing but the
standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.digest import file_digests, sha256_json, tree_digest
from modelgate.errors import ModelGateError
from modelgate.process import run_tool

SOURCE_KINDS = ("generated", "local", "hub")
GENERATOR_VERSION = 3
# Version of the from-config generator (part of its content key)
CONFIG_GENERATOR_VERSION = 1
# What the from-config generator's output depends on besides the config and the seed
GENERATOR_TOOLS = ("torch", "transformers", "tokenizers", "safetensors")


@dataclass(frozen=True)
class TinyHybridSpec:
    """Geometry of the generated model. Every default keeps W4A16 (group 32/64/128) valid on
    vLLM CPU: Mamba in_proj out = 2*512 + 2*2*32 + 32 = 1184 = 37*32."""

    seed: int = 1234
    hidden_size: int = 256
    hybrid_override_pattern: str = "M-M*M-"
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    mamba_num_heads: int = 32
    mamba_head_dim: int = 16
    n_groups: int = 2
    ssm_state_size: int = 32
    conv_kernel: int = 4
    vocab_size: int = 4096
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    # The training recipe (part of the content key): how many generated task questions, their
    # seed, AdamW steps, learning rate, batch size and torch's thread count (the order of float
    # reductions depends on it, so it is fixed for a reproducible digest).
    train_examples: int = 2000
    train_seed: int = 99
    train_steps: int = 600
    train_lr: float = 3e-3
    train_batch: int = 256
    train_threads: int = 2

    def key(self, tool_versions: dict[str, str] | None = None) -> str:
        """Content address of the generated model: its spec (geometry and training recipe), the
        generator's version and, when known, the versions of the tools that train it."""
        data: dict[str, Any] = {"spec": asdict(self), "generator": GENERATOR_VERSION}
        if tool_versions:
            data["tools"] = dict(sorted(tool_versions.items()))
        return sha256_json(data)[:16]


@dataclass
class SourceModel:
    """A resolved source checkpoint."""

    kind: str
    name: str
    path: str
    digest: str
    revision: str = ""
    changed: bool = False
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (without the per-file digests, which can be long)."""
        d = asdict(self)
        d.pop("files")
        return d


# --- local text: the tokenizer's training corpus and the default calibration set ---------------

_SUBJECTS = ("The engineer", "A model", "The server", "Every request", "The gate", "Our cluster",
             "The registry", "A checkpoint", "The report", "This pipeline")
_VERBS = ("measures", "compresses", "serves", "validates", "deploys", "rejects", "records",
          "compares", "packages", "schedules")
_OBJECTS = ("the latency of each request", "a quantized checkpoint", "the baseline variant",
            "every layer of the network", "tokens at a constant rate", "the accuracy of answers",
            "an image with its provenance", "the memory of the accelerator",
            "the state of each sequence", "a verdict with its numbers")
_CLAUSES = ("before any expensive work starts", "when the tolerance is exceeded",
            "after the warm-up requests", "while the load stays constant",
            "so that nothing is lost on failure", "as the policy demands",
            "under identical serving flags", "without a network connection")


def corpus_lines(n: int = 4000, seed: int = 7) -> list[str]:
    """Return ``n`` deterministic lines of English-like text and simple arithmetic."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 3 == 2:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            lines.append(f"Question: what is {a} plus {b}? Answer: {a + b}.")
        else:
            lines.append(
                f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                f"{rng.choice(_CLAUSES)}."
            )
    return lines


def write_corpus(path: Path, n: int = 4000, seed: int = 7) -> Path:
    """Write the deterministic corpus as JSONL (``{"text": ...}`` per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for line in corpus_lines(n, seed):
            f.write(json.dumps({"text": line}) + "\n")
    return path


# --- the task the generated model learns (standard library only) ------------------------------

# Seed of the questions in data/tasks/modelgate_choice/choice.jsonl (the training set uses
# TinyHybridSpec.train_seed, another stream of the same generator).
CHOICE_TASK_SEED = 7
CHOICE_TASK_SIZE = 200


def choice_questions(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` multiple-choice questions with exact answers, alternating two kinds: the next term
    of an arithmetic progression, and the larger of two numbers. Each has four choices (the
    answer and three near misses; for "larger", the smaller number is always one of them)."""
    import random

    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2 == 0:
            start, step = rng.randint(1, 20), rng.randint(2, 9)
            answer = start + 4 * step
            question = ("What comes next: " + ", ".join(str(start + k * step) for k in range(4))
                        + ",")
            pool = sorted(p for p in {answer + d for d in (-step, -2, -1, 1, 2, 3, step)}
                          if 0 < p != answer)
            distract = rng.sample(pool, 3)
        else:
            a, b = rng.sample(range(10, 100), 2)
            answer, smaller = max(a, b), min(a, b)
            question = f"Which number is larger, {a} or {b}?"
            pool = sorted(p for p in {answer + d for d in (-10, -9, -1, 1, 9, 10, 11)}
                          if 0 < p != answer and p != smaller)
            distract = [smaller, *rng.sample(pool, 2)]
        choices = [str(c) for c in (*distract, answer)]
        rng.shuffle(choices)
        out.append({"id": i, "question": question, "choices": choices,
                    "label": choices.index(str(answer))})
    return out


def write_choice_task(path: Path, n: int = CHOICE_TASK_SIZE, seed: int = CHOICE_TASK_SEED) -> Path:
    """Write the ``modelgate_choice`` task's questions as JSONL."""
    with path.open("w") as f:
        for q in choice_questions(n, seed):
            f.write(json.dumps(q) + "\n")
    return path


# --- generation (runs in a virtualenv with torch + transformers + tokenizers) -----------------

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _train_tokenizer(out_dir: Path, spec: TinyHybridSpec) -> int:
    """Train a byte-level BPE tokenizer on the local corpus; return its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    task = [f"{q['question']}\nAnswer: {q['choices'][q['label']]}"
            for q in choice_questions(1000, spec.train_seed)]
    tok.train_from_iterator([*corpus_lines(), *task], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return tok.get_vocab_size()


def _answer_features(model: Any, tok: Any, questions: list[dict[str, Any]]) -> Any:
    """The residual stream entering the model's last block at the position that predicts each
    question's answer (after ``"\nAnswer:"``), computed once with the body frozen."""
    import torch

    grabbed: list[Any] = []
    hook = model.model.layers[-1].register_forward_pre_hook(
        lambda mod, args, kwargs: grabbed.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    feats = []
    try:
        with torch.no_grad():
            for start in range(0, len(questions), 64):
                ctxs = [tok(q["question"] + "\nAnswer:")["input_ids"]
                        for q in questions[start:start + 64]]
                width = max(map(len, ctxs))
                # left-padded, so the last position of every row is the one that answers
                ids = torch.zeros(len(ctxs), width, dtype=torch.long)
                mask = torch.zeros(len(ctxs), width, dtype=torch.long)
                for row, ctx in enumerate(ctxs):
                    ids[row, width - len(ctx):] = torch.tensor(ctx)
                    mask[row, width - len(ctx):] = 1
                grabbed.clear()
                model(input_ids=ids, attention_mask=mask)
                feats.append(grabbed[0][:, -1])
    finally:
        hook.remove()
    return torch.cat(feats)


def _train_head(model: Any, tok: Any, spec: TinyHybridSpec) -> dict[str, Any]:
    """Train the last block, the final norm and the output head on the choice task; return the
    training record (seconds, final loss, held-out accuracy on the task's own questions)."""
    import torch

    t0 = time.monotonic()
    train = choice_questions(spec.train_examples, spec.train_seed)
    feats = _answer_features(model, tok, train)
    feature_s = time.monotonic() - t0
    targets = torch.tensor([tok(" " + q["choices"][q["label"]])["input_ids"][0] for q in train])
    last, norm, head = model.model.layers[-1], model.model.norm_f, model.lm_head
    trained = [*last.parameters(), *norm.parameters(), *head.parameters()]
    for param in model.parameters():
        param.requires_grad_(False)
    for param in trained:
        param.requires_grad_(True)

    def logits(x: Any) -> Any:
        out = last(x[:, None])
        return head(norm(out[0] if isinstance(out, tuple) else out))[:, 0]

    opt = torch.optim.AdamW(trained, lr=spec.train_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(spec.train_seed)
    loss = torch.zeros(())
    for __step in range(spec.train_steps):
        idx = torch.randint(0, len(train), (spec.train_batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(logits(feats[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for param in model.parameters():
        param.requires_grad_(True)
    # Held-out check on the lm-eval task's questions, by the first token of each choice
    # (every choice is one token with this tokenizer): what the served model should reach.
    test = choice_questions(CHOICE_TASK_SIZE, CHOICE_TASK_SEED)
    with torch.no_grad():
        test_logits = logits(_answer_features(model, tok, test))
    correct = 0
    for q, row in zip(test, test_logits, strict=True):
        firsts = [tok(" " + c)["input_ids"][0] for c in q["choices"]]
        best = max(range(len(firsts)), key=lambda k: float(row[firsts[k]]))
        correct += int(best == q["label"])
    return {"task": "modelgate_choice", "examples": spec.train_examples,
            "steps": spec.train_steps, "final_loss": round(float(loss), 4),
            "heldout_accuracy": round(correct / len(test), 4), "chance": 0.25,
            "feature_s": round(feature_s, 2), "seconds": round(time.monotonic() - t0, 2)}


def generate_tiny_hybrid(out_dir: Path, spec: TinyHybridSpec) -> dict[str, Any]:
    """Build the tiny Nemotron-H model, teach it the choice task, and write it with its
    tokenizer into ``out_dir`` (BF16 safetensors). Returns the training record."""
    import torch
    from transformers import AutoTokenizer, NemotronHConfig, NemotronHForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _train_tokenizer(out_dir, spec)
    vocab = -(-vocab // 64) * 64  # pad the embedding to a multiple of 64, as real models do
    torch.set_num_threads(spec.train_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(spec.seed)
    config = NemotronHConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        hybrid_override_pattern=spec.hybrid_override_pattern,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.intermediate_size,
        mamba_num_heads=spec.mamba_num_heads,
        mamba_head_dim=spec.mamba_head_dim,
        n_groups=spec.n_groups,
        ssm_state_size=spec.ssm_state_size,
        conv_kernel=spec.conv_kernel,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        # The reference scan materialises chunk x chunk x state tensors: short chunks make the
        # feature pass several times faster (the result does not depend on the chunk size).
        chunk_size=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        use_mamba_kernels=False,
        torch_dtype="bfloat16",
    )
    model = NemotronHForCausalLM(config).eval()
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    training = _train_head(model, tok, spec)
    model.config.chunk_size = 128  # what the served model's config says (vLLM's default)
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # vLLM reads the block layout from hybrid_override_pattern; write it explicitly.
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hybrid_override_pattern"] = spec.hybrid_override_pattern
    cfg["num_hidden_layers"] = len(spec.hybrid_override_pattern)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out_dir / "modelgate-generated.json").write_text(
        json.dumps({"generator": GENERATOR_VERSION, "spec": asdict(spec), "training": training},
                   indent=2, sort_keys=True) + "\n"
    )
    return training


# --- generation from a published config.json (random weights, exact geometry) -----------------

# Keys of a published config.json that describe the file, not the model: the generator drops
# them (auto_map names remote code the store does not have; transformers writes its own version).
_CONFIG_DROP = ("_comment", "_name_or_path", "auto_map", "transformers_version")


def _json_float(obj: dict[str, Any]) -> Any:
    """transformers 5 saves a non-finite float as ``{"__float__": "Infinity"}``: read it back."""
    if len(obj) == 1 and isinstance(obj.get("__float__"), str):
        return float(obj["__float__"])
    return obj


@dataclass(frozen=True)
class ConfigModelSpec:
    """A random-weights model with the geometry of a published ``config.json``.

    The content key is the config file's digest, the seed, the generator's version and the
    versions of the tools that write the weights: the same inputs give the same directory.
    """

    config_path: str
    seed: int = 0

    def config(self) -> dict[str, Any]:
        """The config as published (parsed)."""
        data = json.loads(Path(self.config_path).read_text(), object_hook=_json_float)
        if not isinstance(data, dict) or not data.get("model_type"):
            raise ModelGateError(
                f"{self.config_path} is not a model config.json (no model_type)",
                field="modelgate_model.config",
                fix="give a checkpoint's config.json (with model_type and architectures)")
        return data

    def config_digest(self) -> str:
        """sha256 of the config file's bytes."""
        from modelgate.digest import sha256_file

        return sha256_file(Path(self.config_path))

    def key(self, tool_versions: dict[str, str]) -> str:
        """Content address of the generated model."""
        return sha256_json({"config": self.config_digest(), "seed": self.seed,
                            "generator": CONFIG_GENERATOR_VERSION,
                            "tools": dict(sorted(tool_versions.items()))})[:16]


def probe_generator_versions(python: str) -> dict[str, str]:
    """The versions of :data:`GENERATOR_TOOLS` in ``python``'s environment (metadata only,
    no import of torch: cheap)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n"
            "    except m.PackageNotFoundError:\n        return 'absent'\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    proc = run_tool([python, "-c", code, *GENERATOR_TOOLS])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_hybrid_key(spec: TinyHybridSpec, python: str = "") -> str:
    """The tiny hybrid's content key; with ``python`` (the generator's environment) it covers
    the versions of the tools that train it. Cheap: no training, no torch import (check mode)."""
    return spec.key(probe_generator_versions(python) if python else None)


def _wordlevel_tokenizer(out_dir: Path, vocab_size: int, bos: int, eos: int, pad: int) -> None:
    """A WordLevel tokenizer whose vocabulary is exactly ``vocab_size`` ids: every id the
    embedding has is a word, so prompts of N words are N tokens (GuideLLM sizes prompts so)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {pad: "<pad>", bos: "<s>", eos: "</s>"}
    unk = next(i for i in range(vocab_size) if i not in special)
    special[unk] = "<unk>"
    vocab = {special.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # "<unk>" is not declared special: GuideLLM builds its synthetic prompts by decoding
    # tokens with skip_special_tokens, and every English word of its corpus is unknown here,
    # so a special unk would decode to empty prompts. As a plain word it decodes to "<unk>",
    # which encodes back to one token: a prompt of N words stays N tokens.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def generate_from_config(out_dir: Path, spec: ConfigModelSpec, device: str = "auto") -> dict:
    """Write random BF16 weights with ``spec``'s exact geometry and a WordLevel tokenizer.

    ``device`` ``auto`` initialises on the GPU when there is one (a 9B model's init takes
    seconds there, minutes on a CPU). Returns what was built (parameters, seconds).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.monotonic()
    published = spec.config()
    cfg = {k: v for k, v in published.items() if k not in _CONFIG_DROP}
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    init_s = time.monotonic() - t0
    model.save_pretrained(str(out_dir), safe_serialization=True)
    del model
    # vLLM reads the published keys (e.g. hybrid_override_pattern); transformers may write
    # others in their place, so the published values are put back beside its own.
    cfg_path = out_dir / "config.json"
    written = json.loads(cfg_path.read_text())
    for k, v in published.items():
        if k not in _CONFIG_DROP and k not in ("torch_dtype", "dtype"):
            written[k] = v
    cfg_path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")

    def _id(name: str, default: int) -> int:
        value = published.get(name)
        return int(value[0] if isinstance(value, list) else value) if value is not None \
            else default

    vocab = int(published.get("vocab_size") or config.vocab_size)
    _wordlevel_tokenizer(out_dir, vocab, bos=_id("bos_token_id", 1), eos=_id("eos_token_id", 2),
                         pad=_id("pad_token_id", 0))
    built = {"generator": CONFIG_GENERATOR_VERSION, "config_path": spec.config_path,
             "config_digest": spec.config_digest(), "seed": spec.seed, "parameters": params,
             "device": device, "init_s": round(init_s, 2),
             "seconds": round(time.monotonic() - t0, 2)}
    (out_dir / "modelgate-generated.json").write_text(
        json.dumps(built, indent=2, sort_keys=True) + "\n")
    return built


# --- resolution (standard library only) -------------------------------------------------------


def _digest_model(path: Path) -> tuple[str, dict[str, str]]:
    files = file_digests(path)
    return tree_digest(path, files), files


def _finish(kind: str, name: str, path: Path, changed: bool, revision: str = "") -> SourceModel:
    if not (path / "config.json").is_file():
        raise ModelGateError(
            f"{path} holds no config.json, so it is not a model checkpoint",
            field="modelgate_model.path",
            fix="point it at a directory saved with save_pretrained (config.json + *.safetensors)",
        )
    digest, files = _digest_model(path)
    return SourceModel(kind=kind, name=name, path=str(path), digest=digest, revision=revision,
                       changed=changed, files=files)


def resolve_model(
    kind: str,
    *,
    store_dir: Path,
    name: str = "",
    path: str = "",
    hub_id: str = "",
    revision: str = "",
    generator_python: str = "",
    spec: TinyHybridSpec | None = None,
    config: str = "",
    seed: int = 0,
) -> SourceModel:
    """Make the source model available locally and return it with its digest.

    ``generated`` models live in ``store_dir/models/generated-<key>`` and are built once
    (atomically: a temporary directory renamed when complete). With ``config`` (a published
    config.json) the generated model has that exact geometry and random weights from ``seed``
    (see :class:`ConfigModelSpec`); without it, the tiny hybrid of ``spec``.
    """
    if kind not in SOURCE_KINDS:
        raise ModelGateError(
            f"unknown model source kind {kind!r}",
            field="modelgate_model.source",
            fix=f"use one of: {', '.join(SOURCE_KINDS)}",
        )
    if kind == "local":
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ModelGateError(
                f"model directory {p} does not exist",
                field="modelgate_model.path",
                fix="set it to an existing checkpoint directory, or use source: generated",
            )
        return _finish("local", name or p.name, p.resolve(), changed=False, revision=revision)
    if kind == "generated":
        if config and not Path(config).is_file():
            raise ModelGateError(f"config {config} does not exist",
                                 field="modelgate_model.config",
                                 fix="give the path of a published config.json")
        if config and not generator_python:
            raise ModelGateError(
                "generating the model needs a Python with torch and transformers",
                field="generator_python", fix="pass the quantize virtualenv's python")
        if config:
            cspec = ConfigModelSpec(str(Path(config).resolve()), seed)
            dest = store_dir / "models" / (
                f"generated-{cspec.key(probe_generator_versions(generator_python))}")
            argv_tail = ["--config", cspec.config_path, "--seed", str(seed)]
        else:
            spec = spec or TinyHybridSpec()
            dest = store_dir / "models" / f"generated-{tiny_hybrid_key(spec, generator_python)}"
            argv_tail = ["--spec-json", json.dumps(asdict(spec))]
        if (dest / "modelgate-generated.json").is_file():
            return _finish("generated", name or dest.name, dest, changed=False)
        if not generator_python:
            raise ModelGateError(
                "generating the model needs a Python with torch and transformers",
                field="generator_python",
                fix="pass the quantize virtualenv's python",
            )
        tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        run_tool(
            [generator_python, "-m", "modelgate.model_source", "generate", "--out", str(tmp),
             *argv_tail],
            log=store_dir / "models" / f"{dest.name}.log",
        )
        tmp.rename(dest)
        return _finish("generated", name or dest.name, dest, changed=True)
    # hub
    if not hub_id:
        raise ModelGateError("a hub source needs an id", field="modelgate_model.hub_id",
                             fix="set e.g. nvidia/NVIDIA-Nemotron-Nano-9B-v2")
    dest = store_dir / "models" / "hub" / hub_id.replace("/", "--") / (revision or "main")
    if (dest / "config.json").is_file():
        return _finish("hub", name or hub_id, dest, changed=False, revision=revision)
    if not generator_python:
        raise ModelGateError("downloading from the hub needs a Python with huggingface_hub",
                             field="generator_python", fix="pass the quantize virtualenv's python")
    run_tool(
        [generator_python, "-c",
         "import sys; from huggingface_hub import snapshot_download as d; "
         "d(sys.argv[1], revision=sys.argv[2] or None, local_dir=sys.argv[3])",
         hub_id, revision, str(dest)],
        log=store_dir / "models" / "hub-download.log",
    )
    return _finish("hub", name or hub_id, dest, changed=True, revision=revision)


# --- CLI --------------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    t0 = time.monotonic()
    if args.config:
        built = generate_from_config(Path(args.out), ConfigModelSpec(args.config, args.seed),
                                     device=args.device)
        emit({"path": args.out, **built})
        return 0
    spec = TinyHybridSpec(**json.loads(args.spec_json)) if args.spec_json else TinyHybridSpec()
    training = generate_tiny_hybrid(Path(args.out), spec)
    emit({"path": args.out, "training": training, "seconds": round(time.monotonic() - t0, 2)})
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    model = resolve_model(
        args.source, store_dir=Path(args.store), name=args.name, path=args.path,
        hub_id=args.hub_id, revision=args.revision, generator_python=args.python,
        config=args.config, seed=args.seed,
    )
    emit(model.to_dict())
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from modelgate.cli import emit

    emit({"path": str(write_corpus(Path(args.out), args.lines))})
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``model generate|resolve|corpus``."""
    p = sub.add_parser("model", help="resolve or generate the source model")
    msub = p.add_subparsers(dest="model_command", required=True)
    g = msub.add_parser("generate", help="build the tiny hybrid model, or random weights of a "
                        "published config.json (needs torch)")
    g.add_argument("--out", required=True)
    g.add_argument("--spec-json", default="")
    g.add_argument("--config", default="", help="a published config.json: its exact geometry")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto (GPU when there is one), cuda, cpu")
    g.set_defaults(func=_cmd_generate)
    r = msub.add_parser("resolve", help="make a source model available and digest it")
    r.add_argument("--source", choices=SOURCE_KINDS, default="generated")
    r.add_argument("--store", required=True)
    r.add_argument("--name", default="")
    r.add_argument("--path", default="")
    r.add_argument("--hub-id", default="")
    r.add_argument("--revision", default="")
    r.add_argument("--python", default="", help="python with torch+transformers")
    r.add_argument("--config", default="", help="generated: a published config.json")
    r.add_argument("--seed", type=int, default=0, help="generated from --config: weight seed")
    r.set_defaults(func=_cmd_resolve)
    c = msub.add_parser("corpus", help="write the local text corpus (JSONL)")
    c.add_argument("--out", required=True)
    c.add_argument("--lines", type=int, default=4000)
    c.set_defaults(func=_cmd_corpus)


if __name__ == "__main__":
    import sys

    from modelgate.cli import main

    sys.exit(main(["model", *sys.argv[1:]], modules=("modelgate.model_source",)))
