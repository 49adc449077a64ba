#!/usr/bin/python
"""Report a background (async) ModelGate job's progress, and its result once it finishes."""

from __future__ import annotations

DOCUMENTATION = r"""
module: job_progress
short_description: Follow a background ModelGate job and return its result when it finishes
description:
  - >-
    Ansible modules cannot stream output, so a long job (a quantization) runs with C(async) and
    C(poll: 0), and this module is retried with C(until: result.finished). Each call reads the
    job's async result file and its progress file and returns RV(finished) plus RV(msg), the
    latest progress (for example C(w4a16: layer 4/6, 21 s)); the collection's C(progress)
    callback prints that message on every retry.
  - >-
    Once the job has finished, it returns the job's own result (for the quantize module:
    C(path), C(key), C(provenance)) and its C(changed), so the task reports C(changed) or C(ok)
    as the job did, removes the async result file, and fails with the job's message when the
    job failed.
version_added: "0.1.0"
author: ModelGate maintainers (@modelgate)
options:
  jid:
    description: The C(ansible_job_id) registered by the async task.
    type: str
    required: true
  progress_file:
    description: The job's progress file (C(<ISO time> <message>) lines); may not exist yet.
    type: path
  label:
    description: What the job is, shown at the start of RV(msg) (for example the variant).
    type: str
    default: job
  async_dir:
    description:
      - Where async results are written; default C(ANSIBLE_ASYNC_DIR) or C(~/.ansible_async),
        as for the async task (set it when the async task used another C(async_dir)).
    type: path
  cleanup:
    description: Remove the async result file once the final result has been read.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
    details: Reads only; in check mode the async job ran in check mode too.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Start quantizing in the background
  modelgate.pipeline.quantize:
    model: /srv/models/tiny
    variant: w4a16
    recipe: w4a16
    store_dir: /srv/modelgate/store/checkpoints
    python: /srv/modelgate/venvs/quantize/bin/python
    progress_file: /srv/modelgate/store/checkpoints/.progress/w4a16.log
  async: 21600
  poll: 0
  register: started
  changed_when: false

- name: Wait for it, showing progress on every retry
  modelgate.pipeline.job_progress:
    jid: "{{ started.ansible_job_id }}"
    progress_file: /srv/modelgate/store/checkpoints/.progress/w4a16.log
    label: w4a16
  register: quantized
  until: quantized.finished
  retries: 4320
  delay: 5
"""

RETURN = r"""
finished:
  description: Whether the job has finished.
  type: bool
  returned: always
msg:
  description: "The latest progress, e.g. C(w4a16: layer 4/6, 21 s), or the job's own message."
  type: str
  returned: always
progress:
  description: Layers done and total and the latest phase, when the progress file exists.
  type: dict
  returned: always
  sample: {layer: 4, layers: 6, latest: "layer 4/6 elapsed 21.0s"}
path:
  description: (quantize) The checkpoint directory; every key of the job's result is returned.
  type: str
  returned: when finished
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.modelgate.pipeline.plugins.module_utils.modelgate_module import (
    require_modelgate,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "jid": {"type": "str", "required": True},
            "progress_file": {"type": "path"},
            "label": {"type": "str", "default": "job"},
            "async_dir": {"type": "path"},
            "cleanup": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    require_modelgate(module)
    from pathlib import Path

    from modelgate.errors import ModelGateError
    from modelgate.quantize_runners import (
        async_dir_default,
        job_outcome,
        parse_progress,
        progress_message,
        read_async_result,
    )

    p = module.params
    async_dir = Path(p["async_dir"]) if p["async_dir"] else async_dir_default()
    pfile = Path(p["progress_file"]) if p["progress_file"] else None
    prog = parse_progress(pfile.read_text() if pfile and pfile.is_file() else "")
    summary = {"layer": prog.layer, "layers": prog.layers, "latest": prog.latest}
    try:
        data = read_async_result(async_dir, p["jid"])
    except ModelGateError as exc:
        module.fail_json(msg=str(exc), finished=True, progress=summary)
    if data is None:
        module.exit_json(changed=False, finished=False, progress=summary,
                         msg=progress_message(p["label"], prog))
    outcome = job_outcome(data)
    if p["cleanup"]:
        (async_dir / p["jid"]).unlink(missing_ok=True)
    if outcome.pop("failed", False):
        msg = outcome.pop("msg", "the job failed")
        module.fail_json(msg=f"{p['label']}: {msg}", finished=True, progress=summary, **outcome)
    outcome.setdefault("changed", False)
    outcome.setdefault("msg", f"{p['label']}: finished")
    module.exit_json(finished=True, progress=summary, **outcome)


if __name__ == "__main__":
    main()
