"""Fidelity of a candidate to its baseline: token-flip rate and KL divergence.

Both models are scored on the SAME token sequences (teacher forcing): the baseline's greedy
continuation of each prompt is generated once, then each server is asked for the top-k
log-probabilities at every continuation position via vLLM's ``prompt_logprobs`` over
prompt + continuation (token ids, so no re-tokenization drift). Per-position distributions
are then directly comparable, which free-running generation would not give: one early
divergence would make every later position incomparable.

KL approximation: a server returns only the top-k log-probabilities (plus the scored token).
For each position both distributions are restricted to the union U of the tokens either
returned; a token one side did not return is given that side's smallest returned
log-probability (an upper bound on its true value, since it ranked below the top k);
both are renormalized over U and ``KL(baseline || candidate)`` is computed there. The tail
mass outside U is ignored. Identical inputs give exactly 0; the estimate is reliable when
the top-k holds most of the mass, which is the case for the sharply peaked distributions
of trained models (k = 20 by default, vLLM's default ``max_logprobs``). Worst case measured
here: a random-weight tiny model (top-20 holds only 35% of the mass) vs its RTN W4 copy,
the top-20 estimate was 0.73x the exact KL (0.080 vs 0.110), correlation 0.83 per position.
``top_k=-1`` scores the whole vocabulary (exact KL; the server needs ``--max-logprobs -1``;
only sensible for small vocabularies or few prompts).
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from modelgate.errors import ModelGateError, ToolError

DEFAULT_TOP_K = 20
DEFAULT_MAX_TOKENS = 32


def load_prompts(path: str | Path | None = None) -> list[dict[str, str]]:
    """Load a prompt set (JSONL of {"id", "prompt"}); the built-in 32 prompts by default."""
    if path is None:
        text = resources.files("modelgate").joinpath("data/fidelity_prompts.jsonl").read_text()
    else:
        text = Path(path).read_text()
    prompts = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, p in enumerate(prompts):
        if "prompt" not in p:
            raise ModelGateError(f"prompt line {i + 1} has no 'prompt' key", field="prompts",
                                 fix='each line must be {"id": ..., "prompt": ...}')
        p.setdefault("id", f"p{i:02d}")
    return prompts


def _api_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    for suffix in ("/v1/completions", "/v1"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ToolError(f"{url} answered {exc.code}: {detail}",
                        fix="check that the server is vLLM (prompt_logprobs support) and "
                            "that top_k <= its --max-logprobs") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ToolError(f"{url} unreachable: {exc}", fix="start the server first") from exc


def _top_dict(entry: dict[str, Any] | None) -> dict[int, float]:
    """vLLM's prompt_logprobs entry {token_id: {"logprob", "rank", ...}} -> {id: logprob}."""
    if not entry:
        return {}
    return {int(tok): float(v["logprob"]) for tok, v in entry.items()}


def collect_logprobs(
    base_url: str,
    model_name: str,
    prompts: list[dict[str, str]],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    top_k: int = DEFAULT_TOP_K,
    reference: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Score each prompt's continuation on the served model; return ``logprobs.json`` data.

    Without ``reference`` the continuation is this model's own greedy output (temperature
    0, ``max_tokens`` tokens, EOS ignored so every prompt has the same length): use that
    for the baseline. With ``reference`` (a baseline's result) the exact same token
    sequences are scored, so ``compare`` can match positions one to one.
    """
    url = f"{_api_root(base_url)}/v1/completions"
    started = time.monotonic()
    ref_by_id: dict[str, dict[str, Any]] = {}
    if reference is not None:
        ref_by_id = {p["id"]: p for p in reference["prompts"]}
        prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in reference["prompts"]]
    records = []
    for p in prompts:
        if reference is not None:
            ref = ref_by_id[p["id"]]
            prompt_ids = list(ref["prompt_token_ids"])
            cont_ids = list(ref["continuation_token_ids"])
        else:
            gen = _post(url, {
                "model": model_name, "prompt": p["prompt"], "max_tokens": max_tokens,
                "temperature": 0.0, "ignore_eos": True, "return_token_ids": True,
            }, timeout)
            choice = gen["choices"][0]
            prompt_ids = choice.get("prompt_token_ids")
            cont_ids = choice.get("token_ids")
            if prompt_ids is None or cont_ids is None:
                raise ToolError("the server returned no token ids (return_token_ids)",
                                fix="use vLLM >= 0.10 as the server")
        # max_tokens=1: we only want the prompt's log-probs; the one sampled token is unused.
        scored = _post(url, {
            "model": model_name, "prompt": prompt_ids + cont_ids, "max_tokens": 1,
            "temperature": 0.0, "prompt_logprobs": top_k,
        }, timeout)
        plp = scored["choices"][0].get("prompt_logprobs")
        if plp is None or len(plp) != len(prompt_ids) + len(cont_ids):
            raise ToolError("the server returned no per-position prompt_logprobs",
                            fix="use a vLLM server (it supports prompt_logprobs)")
        positions = []
        agree = 0
        for j, tok in enumerate(cont_ids):
            top = _top_dict(plp[len(prompt_ids) + j])
            positions.append({"token_id": int(tok), "logprob": top.get(int(tok)),
                              "top": {str(k): v for k, v in top.items()}})
            agree += bool(top) and argmax_token(top) == int(tok)
        records.append({
            "id": p["id"], "prompt": p["prompt"], "prompt_token_ids": prompt_ids,
            "continuation_token_ids": cont_ids, "positions": positions,
            # Share of positions where the scored token is this model's own argmax: 1.0
            # for the baseline's own greedy text unless the server is non-deterministic.
            "greedy_agreement": agree / len(cont_ids) if cont_ids else 1.0,
        })
    return {
        "model": model_name,
        "base_url": base_url,
        "top_k": top_k,
        "max_tokens": max_tokens if reference is None else reference.get("max_tokens"),
        "sequence_source": reference.get("model") if reference is not None else model_name,
        "prompts": records,
        "wall_s": round(time.monotonic() - started, 2),
    }


# ---------------------------------------------------------------------------------------
# Maths (pure)


def argmax_token(top: dict[int, float]) -> int:
    """The most likely token; ties broken by the lower token id, so it is deterministic."""
    return min(top.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _log_softmax(logps: list[float]) -> list[float]:
    m = max(logps)
    z = m + math.log(sum(math.exp(x - m) for x in logps))
    return [x - z for x in logps]


def topk_kl(p_top: dict[int, float], q_top: dict[int, float]) -> float:
    """KL(p || q) over the union of two top-k sets (see the module docstring)."""
    if not p_top or not q_top:
        raise ModelGateError("empty top-k distribution", fix="collect with top_k >= 1")
    union = sorted(set(p_top) | set(q_top))
    p_floor, q_floor = min(p_top.values()), min(q_top.values())
    lp = _log_softmax([p_top.get(t, p_floor) for t in union])
    lq = _log_softmax([q_top.get(t, q_floor) for t in union])
    kl = sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))
    return max(kl, 0.0)  # rounding can leave -1e-17


def _as_int_keys(top: dict[str, float]) -> dict[int, float]:
    return {int(k): float(v) for k, v in top.items()}


def compare(baseline: dict[str, Any], candidate: dict[str, Any],
            baseline_name: str | None = None) -> dict[str, Any]:
    """Token-flip rate and mean top-k KL of ``candidate`` vs ``baseline`` (pure).

    A flip is a position where the two models' most likely next tokens differ.
    Both inputs must have scored the same token sequences (collect the candidate with
    ``reference=baseline``).
    """
    cand_by_id = {p["id"]: p for p in candidate["prompts"]}
    per_prompt = []
    flips_total, kl_total, tokens_total = 0, 0.0, 0
    for bp in baseline["prompts"]:
        cp = cand_by_id.get(bp["id"])
        if cp is None or (cp["prompt_token_ids"], cp["continuation_token_ids"]) != (
            bp["prompt_token_ids"], bp["continuation_token_ids"]
        ):
            raise ModelGateError(
                f"prompt {bp['id']}: the candidate scored a different token sequence",
                field="candidate",
                fix="collect the candidate with --reference <baseline logprobs.json>, with "
                    "the same tokenizer",
            )
        flips, kl_sum = 0, 0.0
        for bpos, cpos in zip(bp["positions"], cp["positions"], strict=True):
            p_top, q_top = _as_int_keys(bpos["top"]), _as_int_keys(cpos["top"])
            flips += argmax_token(p_top) != argmax_token(q_top)
            kl_sum += topk_kl(p_top, q_top)
        n = len(bp["positions"])
        per_prompt.append({"id": bp["id"], "tokens": n,
                           "flip_rate": flips / n if n else 0.0,
                           "kl_mean": kl_sum / n if n else 0.0})
        flips_total += flips
        kl_total += kl_sum
        tokens_total += n
    return {
        "baseline": baseline_name or baseline.get("model", ""),
        "candidate": candidate.get("model", ""),
        "prompts": len(per_prompt),
        "tokens": tokens_total,
        "top_k": min(int(baseline.get("top_k") or 0), int(candidate.get("top_k") or 0)),
        "flip_rate": flips_total / tokens_total if tokens_total else 0.0,
        "kl_mean": kl_total / tokens_total if tokens_total else 0.0,
        "kl_method": "top-k union, missing entries floored at the side's smallest logprob, "
                     "renormalized; tail ignored",
        "per_prompt": per_prompt,
    }


# ---------------------------------------------------------------------------------------
# CLI


def _cmd_collect(args: Any) -> int:
    from modelgate.cli import emit

    reference = json.loads(Path(args.reference).read_text()) if args.reference else None
    data = collect_logprobs(args.base_url, args.model, load_prompts(args.prompts),
                            max_tokens=args.max_tokens, top_k=args.top_k, reference=reference)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    emit({"logprobs": str(out), "model": data["model"], "prompts": len(data["prompts"]),
          "tokens": sum(len(p["positions"]) for p in data["prompts"]),
          "sequence_source": data["sequence_source"], "wall_s": data["wall_s"]})
    return 0


def _cmd_compare(args: Any) -> int:
    from modelgate.cli import emit

    baseline = json.loads(Path(args.baseline).read_text())
    candidate = json.loads(Path(args.candidate).read_text())
    result = compare(baseline, candidate, baseline_name=args.baseline_name)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    emit({k: v for k, v in result.items() if k != "per_prompt"} | (
        {"fidelity": args.out} if args.out else {"per_prompt": result["per_prompt"]}))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``fidelity collect`` and ``fidelity compare``."""
    p = subparsers.add_parser("fidelity", help="token-flip rate and KL vs a baseline")
    sub = p.add_subparsers(dest="fidelity_command", required=True)
    c = sub.add_parser("collect", help="score prompts on a server -> logprobs.json")
    c.add_argument("--base-url", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    c.add_argument("--model", required=True, help="served model name")
    c.add_argument("--out", required=True, help="where to write logprobs.json")
    c.add_argument("--prompts", default=None, help="JSONL prompt set (default: built-in 32)")
    c.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    c.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    c.add_argument("--reference", default=None,
                   help="baseline logprobs.json: score its exact token sequences")
    c.set_defaults(func=_cmd_collect)
    m = sub.add_parser("compare", help="compare two logprobs.json -> fidelity.json")
    m.add_argument("--baseline", required=True)
    m.add_argument("--candidate", required=True)
    m.add_argument("--baseline-name", default=None, help="variant name of the baseline")
    m.add_argument("--out", default=None, help="where to write fidelity.json")
    m.set_defaults(func=_cmd_compare)
