"""How the validate stage measures the variants: side by side, in groups, or one at a time."""

from __future__ import annotations

import pytest
from modelgate.errors import ModelGateError
from modelgate.measure import plan_measurement, sequential_schedule


def _plan(**kw: object) -> dict:
    args = {"variants": ["bf16", "w8a8"], "rounds": 2, "port": 8000, "cpus": [0, 1]}
    args.update(kw)
    return plan_measurement(**args)  # type: ignore[arg-type]


def test_two_cores_two_variants_each_server_gets_its_own_core_and_the_client_floats() -> None:
    plan = _plan()
    assert plan["design"] == "interleaved"
    (group,) = plan["groups"]
    assert group["servers"] == [
        {"variant": "bf16", "port": 8000, "cpus": [0], "gpus": []},
        {"variant": "w8a8", "port": 8001, "cpus": [1], "gpus": []}]
    assert group["rounds"] == [1, 2] and group["quality_for"] == ["bf16", "w8a8"]
    assert plan["client_cpus"] == []  # both cores serve: GuideLLM and the proxy float
    assert group["stop_after"] == group["servers"]


def test_spare_cores_go_to_the_servers_in_equal_shares_and_one_to_the_client() -> None:
    plan = _plan(cpus=[0, 1, 2, 3, 4, 5])
    servers = plan["groups"][0]["servers"]
    assert [s["cpus"] for s in servers] == [[0, 1], [2, 3]]
    assert plan["client_cpus"] == [4, 5]


def test_more_variants_than_cores_measures_the_baseline_with_each_group_in_turn() -> None:
    plan = _plan(variants=["bf16", "w8a8", "w4a16"], rounds=2)
    g1, g2 = plan["groups"]
    assert g1["variants"] == ["bf16", "w8a8"] and g2["variants"] == ["bf16", "w4a16"]
    # round numbers never collide: the baseline keeps every group's rounds apart
    assert g1["rounds"] == [1, 2] and g2["rounds"] == [3, 4]
    # the baseline's accuracy and logprobs are measured once, in the first group
    assert g2["quality_for"] == ["w4a16"]
    # the baseline's server (same port, same core) is reused by the next group
    assert [s["variant"] for s in g1["stop_after"]] == ["w8a8"]
    assert [s["variant"] for s in g2["stop_after"]] == ["bf16", "w4a16"]
    assert "2 groups" in plan["reason"]


def test_keep_serving_leaves_the_last_group_running() -> None:
    plan = _plan(keep_serving=True)
    assert plan["groups"][0]["stop_after"] == []


def test_one_core_cannot_serve_two_variants_side_by_side() -> None:
    plan = _plan(cpus=[0])
    assert plan["design"] == "sequential"
    assert "1 core(s)" in plan["reason"]
    with pytest.raises(ModelGateError) as err:
        _plan(cpus=[0], design="interleaved")
    assert err.value.field == "modelgate_validate_design"


def test_a_gpu_target_gives_each_variant_its_own_gpus() -> None:
    plan = _plan(variants=["bf16", "w4a16", "fp8"], target="rhaiis", device="cuda",
                 gpus=[0, 1, 2, 3, 4, 5])
    (group,) = plan["groups"]
    assert [s["gpus"] for s in group["servers"]] == [[0, 1], [2, 3], [4, 5]]
    assert [s["port"] for s in group["servers"]] == [8000, 8001, 8002]
    assert plan["client_cpus"] == []


def test_one_gpu_keeps_the_sequential_order_flipped_design() -> None:
    plan = _plan(variants=["bf16", "w4a16", "fp8"], target="rhaiis", device="cuda", gpus=[0])
    assert plan["design"] == "sequential"
    assert plan["schedule"] == [[1, "bf16"], [1, "w4a16"], [1, "fp8"],
                                [2, "fp8"], [2, "w4a16"], [2, "bf16"]]
    assert "1 GPU(s)" in plan["reason"]


def test_requested_sequential_and_a_cpu_stand_in_image_are_sequential() -> None:
    assert _plan(design="sequential")["reason"].startswith("requested")
    plan = _plan(target="rhaiis", device="cpu")
    assert plan["design"] == "sequential" and "one variant at a time" in plan["reason"]


def test_bad_inputs_name_the_field() -> None:
    for kw, field in (({"design": "both"}, "modelgate_validate_design"),
                      ({"rounds": 0}, "modelgate_validate_rounds"),
                      ({"variants": ["a", "a"]}, "modelgate_variants")):
        with pytest.raises(ModelGateError) as err:
            _plan(**kw)
        assert err.value.field == field


def test_sequential_schedule_flips_the_order_every_round() -> None:
    assert sequential_schedule(["a", "b"], 3) == [(1, "a"), (1, "b"), (2, "b"), (2, "a"),
                                                  (3, "a"), (3, "b")]


def test_servers_side_by_side_swap_their_cores_and_get_their_own_back() -> None:
    import os
    import subprocess
    import sys
    import time

    from modelgate.measure import rotating_cores
    from modelgate.process import session_threads

    cpus = sorted(os.sched_getaffinity(0))
    slots = [[cpus[0]], [cpus[-1]]]
    # two supervised-style processes, each its own session with a child thread and a child
    code = ("import subprocess, sys, threading, time; "
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            "time.sleep(30)")
    procs = [subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
             for __ in slots]
    try:
        time.sleep(0.5)
        servers = {f"v{i}": {"pid": p.pid, "cpus": slot}
                   for i, (p, slot) in enumerate(zip(procs, slots, strict=True))}
        with rotating_cores(servers, period_s=0.5) as info:
            deadline = time.monotonic() + 20
            while info["moves"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            moves = info["moves"]
            seen = [os.sched_getaffinity(p.pid) for p in procs]
            if info["moves"] == moves:  # no move in between: after an odd one, swapped
                want = [set(slots[1]), set(slots[0])] if moves % 2 else [set(s) for s in slots]
                assert seen == want
        assert info["moves"] >= 1
        # back on its own cores: every thread of the session, the child process's too
        for proc, slot in zip(procs, slots, strict=True):
            tids = session_threads(proc.pid)
            assert len(tids) >= 3
            assert all(os.sched_getaffinity(t) == set(slot) for t in tids)
        # without cores (a GPU target), nothing rotates
        with rotating_cores({"a": {"pid": procs[0].pid, "cpus": []},
                             "b": {"pid": procs[1].pid, "cpus": []}}, 0.1) as none:
            time.sleep(0.2)
        assert none["period_s"] is None and none["moves"] == 0
    finally:
        for proc in procs:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_the_group_s_running_local_servers_are_found_by_port(tmp_path) -> None:
    import sys

    from modelgate.measure import local_server_sessions
    from modelgate.process import ProcessSpec, start, stop
    from modelgate.serving import server_name

    spec = ProcessSpec(name=server_name(8000), state_dir=tmp_path,
                       argv=[sys.executable, "-c", "import time; time.sleep(30)"])
    state = start(spec)
    try:
        servers = [{"variant": "bf16", "port": 8000, "cpus": [0], "gpus": []},
                   {"variant": "w8a8", "port": 8001, "cpus": [1], "gpus": []}]  # not running
        assert local_server_sessions(servers, tmp_path) == {
            "bf16": {"pid": state["pid"], "cpus": [0]}}
    finally:
        stop(spec)
