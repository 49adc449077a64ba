"""Flip-rate and top-k KL maths, and the comparison of two logprobs files."""

from __future__ import annotations

import math

import pytest
from modelgate.errors import ModelGateError
from modelgate.fidelity import argmax_token, compare, load_prompts, topk_kl


def _logs(probs: dict[int, float]) -> dict[int, float]:
    return {k: math.log(v) for k, v in probs.items()}


def test_kl_of_identical_distributions_is_zero():
    p = _logs({1: 0.7, 2: 0.2, 3: 0.1})
    assert topk_kl(p, dict(p)) == 0.0


def test_kl_equals_the_exact_value_when_top_k_covers_everything():
    p = {1: 0.5, 2: 0.5}
    q = {1: 0.9, 2: 0.1}
    exact = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert topk_kl(_logs(p), _logs(q)) == pytest.approx(exact, rel=1e-12)
    # KL is not symmetric
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert topk_kl(_logs(q), _logs(p)) == pytest.approx(reverse, rel=1e-12)


def test_kl_renormalizes_partial_top_k():
    # only the top 2 of a larger vocabulary were returned: renormalized they are equal
    p = _logs({1: 0.4, 2: 0.4})
    q = _logs({1: 0.2, 2: 0.2})
    assert topk_kl(p, q) == pytest.approx(0.0, abs=1e-12)


def test_kl_floors_missing_tokens_at_the_smallest_returned_logprob():
    p = _logs({1: 0.6, 2: 0.3})  # token 3 not in p's top-k
    q = _logs({1: 0.6, 3: 0.3})  # token 2 not in q's top-k
    # union {1,2,3}: p -> (0.6, 0.3, 0.3), q -> (0.6, 0.3, 0.3) after flooring: equal
    assert topk_kl(p, q) == pytest.approx(0.0, abs=1e-12)
    q2 = _logs({1: 0.3, 3: 0.6})
    assert topk_kl(p, q2) > 0.1


def test_kl_is_never_negative_and_rejects_empty():
    assert topk_kl({5: -0.1}, {5: -0.1, 6: -3.0}) >= 0.0
    with pytest.raises(ModelGateError):
        topk_kl({}, {1: 0.0})


def test_argmax_breaks_ties_by_lower_token_id():
    assert argmax_token({7: -1.0, 3: -1.0, 9: -2.0}) == 3
    assert argmax_token({7: -0.5, 3: -1.0}) == 7


def _record(model: str, tops: list[list[dict[int, float]]]) -> dict:
    prompts = []
    for i, positions in enumerate(tops):
        cont = [argmax_token(t) for t in positions]
        prompts.append({
            "id": f"p{i}", "prompt": f"prompt {i}", "prompt_token_ids": [1, 2, 3],
            "continuation_token_ids": cont,
            "positions": [{"token_id": c, "top": {str(k): v for k, v in t.items()}}
                          for c, t in zip(cont, positions, strict=True)],
        })
    return {"model": model, "top_k": 2, "prompts": prompts}


def test_compare_counts_flips_and_averages_kl():
    a = _logs({10: 0.8, 11: 0.2})
    b = _logs({10: 0.3, 11: 0.7})  # flipped argmax
    base = _record("bf16", [[a, a], [a, a]])
    cand = _record("w4a16", [[a, a], [a, a]])
    cand["prompts"][1]["positions"][0]["top"] = {str(k): v for k, v in b.items()}
    res = compare(base, cand, baseline_name="bf16")
    assert res["baseline"] == "bf16" and res["candidate"] == "w4a16"
    assert (res["prompts"], res["tokens"]) == (2, 4)
    assert res["flip_rate"] == pytest.approx(0.25)
    kl_b = 0.8 * math.log(0.8 / 0.3) + 0.2 * math.log(0.2 / 0.7)
    assert res["kl_mean"] == pytest.approx(kl_b / 4)
    assert res["per_prompt"][0] == {"id": "p0", "tokens": 2, "flip_rate": 0.0, "kl_mean": 0.0}
    assert res["per_prompt"][1]["flip_rate"] == 0.5
    assert res["per_prompt"][1]["kl_mean"] == pytest.approx(kl_b / 2)


def test_compare_self_is_zero():
    a = _logs({10: 0.8, 11: 0.2})
    base = _record("bf16", [[a, a, a]])
    res = compare(base, base)
    assert (res["flip_rate"], res["kl_mean"], res["tokens"]) == (0.0, 0.0, 3)


def test_compare_refuses_different_token_sequences():
    a = _logs({10: 0.8, 11: 0.2})
    base = _record("bf16", [[a]])
    other = _record("w4a16", [[a]])
    other["prompts"][0]["continuation_token_ids"] = [11]
    with pytest.raises(ModelGateError, match="different token sequence") as err:
        compare(base, other)
    assert "--reference" in (err.value.fix or "")


def test_builtin_prompt_set():
    prompts = load_prompts()
    assert len(prompts) == 32
    assert len({p["id"] for p in prompts}) == 32
    assert all(p["prompt"].strip() for p in prompts)


def test_prompt_file_without_prompt_key_is_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "text": "x"}\n')
    with pytest.raises(ModelGateError, match="no 'prompt'"):
        load_prompts(f)
