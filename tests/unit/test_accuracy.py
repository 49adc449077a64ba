"""lm-eval command building, presets, per-sample parsing and the offline task files."""

from __future__ import annotations

import json

import pytest
import yaml
from modelgate.accuracy import (
    PRESETS,
    REASONING_MAX_TOKENS,
    get_task,
    lm_eval_command,
    local_tasks_dir,
    parse_samples,
    read_lm_eval_output,
)
from modelgate.errors import ModelGateError


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_local_task_command_uses_completions_with_token_ids():
    argv = lm_eval_command(get_task("modelgate_choice"), "http://127.0.0.1:18300/v1", "tiny",
                           "/tmp/model", "/out/lm_eval/modelgate_choice", "/venv/bin/lm-eval",
                           limit=5)
    assert argv[:2] == ["/venv/bin/lm-eval", "run"]
    assert _opt(argv, "--model") == "local-completions"
    model_args = json.loads(_opt(argv, "--model_args"))
    assert model_args["base_url"] == "http://127.0.0.1:18300/v1/completions"
    assert model_args["model"] == "tiny"
    assert model_args["tokenizer"] == "/tmp/model"
    assert model_args["tokenizer_backend"] == "huggingface"
    # loglikelihood needs echo+logprobs over token ids
    assert model_args["tokenized_requests"] is True
    assert _opt(argv, "--tasks") == "modelgate_choice"
    assert _opt(argv, "--include_path") == str(local_tasks_dir())
    assert _opt(argv, "--output_path") == "/out/lm_eval/modelgate_choice"
    assert "--log_samples" in argv
    assert _opt(argv, "--limit") == "5"
    assert "--apply_chat_template" not in argv


@pytest.mark.parametrize("name", ["gsm8k", "math500", "gpqa_diamond", "aime25"])
def test_reasoning_presets_use_chat_with_thinking_and_long_generations(name):
    task = get_task(name)
    argv = lm_eval_command(task, "http://gpu:8000", "nemotron", "/models/bf16", "/o",
                           repeat=2)
    assert _opt(argv, "--model") == "local-chat-completions"
    assert "--apply_chat_template" in argv
    assert "--include_path" not in argv
    model_args = json.loads(_opt(argv, "--model_args"))
    assert model_args["base_url"] == "http://gpu:8000/v1/chat/completions"
    assert model_args["tokenized_requests"] is False
    assert model_args["seed"] == 1234 + 2 and _opt(argv, "--seed") == "2"
    gen = json.loads(_opt(argv, "--gen_kwargs"))
    assert gen["chat_template_kwargs"] == {"enable_thinking": True}
    assert gen["max_gen_toks"] >= 16384
    assert _opt(argv, "--num_fewshot") == "0"


def test_preset_task_names_and_repeats():
    assert {n: t.lm_eval_task for n, t in PRESETS.items() if not t.local} == {
        "gsm8k": "gsm8k_cot_zeroshot",
        "math500": "hendrycks_math500",
        "gpqa_diamond": "gpqa_diamond_cot_zeroshot",
        "aime25": "aime25",
    }
    assert get_task("aime25").repeats > 1  # 30 problems: one pass is too noisy to gate on
    assert get_task("aime25").gen_kwargs["max_gen_toks"] == REASONING_MAX_TOKENS
    with pytest.raises(ModelGateError) as err:
        get_task("mmlu")
    assert "gsm8k" in (err.value.fix or "")


def _line(doc_id: int, filt: str, **metrics: float) -> dict:
    return {"doc_id": doc_id, "filter": filt, "metrics": list(metrics), **metrics}


def test_parse_samples_picks_the_wanted_filter():
    lines = [_line(0, "strict-match", exact_match=0.0),
             _line(0, "flexible-extract", exact_match=1.0),
             _line(1, "strict-match", exact_match=1.0),
             _line(1, "flexible-extract", exact_match=1.0)]
    assert parse_samples(lines, "exact_match", "flexible-extract") == {"0": 1.0, "1": 1.0}
    assert parse_samples(lines, "exact_match", "strict-match", ":3") == {
        "0:3": 0.0, "1:3": 1.0}
    with pytest.raises(ModelGateError, match="not among"):
        parse_samples(lines, "exact_match", "none")


def test_parse_samples_single_filter_fallback_and_missing_metric():
    lines = [_line(4, "none", acc=1.0), _line(7, "none", acc=0.0)]
    assert parse_samples(lines, "acc", "strip") == {"4": 1.0, "7": 0.0}
    with pytest.raises(ModelGateError, match="no metric"):
        parse_samples(lines, "exact_match", "none")


def test_read_lm_eval_output_layout(tmp_path):
    # lm-eval writes <output_path>/<model>/results_<ts>.json and samples_<task>_<ts>.jsonl
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "samples_modelgate_arith_2026-11-30T03-15-06.jsonl").write_text(
        "\n".join(json.dumps(_line(i, "strip", exact_match=float(i % 2))) for i in range(4)))
    (d / "results_2026-11-30T03-15-06.json").write_text(json.dumps(
        {"results": {"modelgate_arith": {"exact_match,strip": 0.5,
                                         "exact_match_stderr,strip": 0.1}}}))
    samples, agg = read_lm_eval_output(tmp_path, get_task("modelgate_arith"))
    assert samples == {"0": 0.0, "1": 1.0, "2": 0.0, "3": 1.0}
    assert agg == 0.5


def test_offline_tasks_are_complete():
    root = local_tasks_dir()
    for name, count, metric in (("modelgate_arith", 50, "exact_match"),
                                ("modelgate_choice", 200, "acc")):
        cfg = yaml.safe_load((root / name / f"{name}.yaml").read_text())
        assert cfg["task"] == name == get_task(name).lm_eval_task
        assert cfg["metric_list"][0]["metric"] == metric == get_task(name).metric
        data = root / cfg["dataset_kwargs"]["data_files"]["test"]
        rows = [json.loads(x) for x in data.read_text().splitlines()]
        assert len(rows) == count
        if name == "modelgate_arith":
            assert all(str(eval(r["question"])) == r["answer"] for r in rows)
            assert get_task(name).filter == cfg["filter_list"][0]["name"]
        else:
            for r in rows:
                assert 0 <= r["label"] < len(r["choices"]) == len(set(r["choices"]))


def test_cli_presets_render_every_command(capsys):
    from modelgate import cli

    rc = cli.main(["accuracy-presets", "--base-url", "http://gpu:8000", "--model", "m"],
                  modules=("modelgate.accuracy",))
    assert rc == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == set(PRESETS)
    assert shown["aime25"]["argv"][shown["aime25"]["argv"].index("--tasks") + 1] == "aime25"
