"""The play's own screen output (ansible.cfg's stdout callback) during long waits.

Runs real ``ansible-playbook`` with the project's ansible.cfg: a background job followed by
``modelgate.pipeline.job_progress`` and a plain task retried with ``until``. A successful run's
output must show one progress line per poll and never the word FAILED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLAY = """
- name: Wait for things
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start a background job that reports progress
      ansible.builtin.shell: |
        for i in 1 2 3; do echo "$(date +%Y-%m-%dT%H:%M:%S) step $i/3" >> {progress}; sleep 1; done
      async: 60
      poll: 0
      register: started
      changed_when: false

    - name: Wait for the job
      modelgate.pipeline.job_progress:
        jid: "{{{{ started.ansible_job_id }}}}"
        progress_file: {progress}
        label: demo
      register: done
      until: done.finished
      retries: 30
      delay: 1

    - name: Make a file three seconds from now
      ansible.builtin.shell: sleep 3 && touch {marker}
      async: 60
      poll: 0
      changed_when: false

    - name: Wait for a file the job made
      ansible.builtin.stat:
        path: {marker}
      register: marker
      until: marker.stat.exists
      retries: 5
      delay: 1
      changed_when: false
"""


def test_waits_print_progress_and_never_failed(repo_root: Path, tmp_path: Path) -> None:
    progress, marker = tmp_path / "progress.log", tmp_path / "marker"
    # the play makes the marker 3 s after it starts waiting, so the stat task is retried
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(progress=progress, marker=marker))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "ANSIBLE_CONFIG": str(repo_root / "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": str(repo_root / ".modelgate" / "collections"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_ASYNC_DIR": str(tmp_path / "async")}
    proc = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(play)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "FAILED" not in out, out
    polls = [line for line in out.splitlines() if "progress: demo" in line]
    assert polls and any("step" in line for line in polls), out
    # Ansible counts the first try too: retries 5 = at most 6 attempts
    assert "waiting: Wait for a file the job made (attempt 1 of 6)" in out, out
