"""Unit tests for the one way podman and skopeo are run.

No container runtime: small shell scripts named podman and skopeo stand in for the tools on a
PATH of their own, each printing what the real tool prints on the failure under test.
"""

from __future__ import annotations

import stat
import traceback
from pathlib import Path

import pytest
from modelgate import container_tools
from modelgate.errors import ModelGateError, ToolError
from modelgate.oci_push import RegistryAuthError, RegistryNotFound, TransientRegistryError

SECRET = "pw-s3cret"


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """Write a fake tool: ``fake_bin("skopeo", script)``; PATH holds only these (and sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    def write(name: str, body: str) -> Path:
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    return write


def _all_text(err: BaseException) -> str:
    return " ".join([str(err), repr(err), "".join(traceback.format_exception(err))])


def test_missing_tool_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ModelGateError) as exc:
        container_tools.run_container_tool("skopeo", ["inspect", "docker://r/a:b"])
    assert not isinstance(exc.value, ToolError)
    assert "skopeo is not installed" in str(exc.value) and exc.value.field == "skopeo"
    assert "skopeo package" in (exc.value.fix or "")


def test_missing_configured_executable_is_named(tmp_path):
    with pytest.raises(ModelGateError, match="not installed") as exc:
        container_tools.run_container_tool("podman", ["run", "x"],
                                           executable=str(tmp_path / "my-podman"))
    assert "my-podman" in str(exc.value) and "podman package" in (exc.value.fix or "")


@pytest.mark.parametrize(("said", "error"), [
    ("Error: unauthorized: authentication required", RegistryAuthError),
    ("Error: manifest unknown", RegistryNotFound),
    ("Error: dial tcp 127.0.0.1:1: connect: connection refused", TransientRegistryError),
    ("Error: something else broke", ToolError),
])
def test_registry_failures_are_classified_and_redacted(fake_bin, said, error):
    # the tool echoes the secret, as a verbose tool might; nothing may show it
    fake_bin("skopeo", f'echo "{said} (password {SECRET})" >&2; exit 1')
    with pytest.raises(error) as exc:
        container_tools.run_container_tool("skopeo", ["--override-os", "linux", "copy",
                                                      "docker://r/a:b", "oci:/x"],
                                           secrets=[SECRET])
    assert exc.type is error
    text = _all_text(exc.value)
    assert SECRET not in text and "***" in text
    assert "skopeo copy failed (exit 1)" in text  # the subcommand, not a global option's value
    assert exc.value.__cause__ is None and exc.value.__context__ is None


def test_fatal_line_is_the_error_of_a_debug_run(fake_bin):
    fake_bin("skopeo", 'echo "level=debug msg=noise" >&2; '
                       'echo "level=fatal msg=\\"name unknown\\"" >&2; exit 1')
    with pytest.raises(RegistryNotFound) as exc:
        container_tools.run_container_tool("skopeo", ["--debug", "inspect", "docker://r/a:b"])
    assert "level=fatal" in str(exc.value) and "noise" not in str(exc.value)


def test_podman_commands_that_do_not_talk_to_a_registry_are_plain_tool_errors(fake_bin):
    fake_bin("podman", 'echo "Error: no secret with name or id \\"x\\": not found" >&2; exit 125')
    with pytest.raises(ToolError) as exc:
        container_tools.run_container_tool("podman", ["secret", "rm", "x"])
    assert exc.type is ToolError
    assert "podman secret rm failed (exit 125)" in str(exc.value)


def test_unchecked_failure_is_returned_redacted_and_success_output_untouched(fake_bin):
    fake_bin("podman", f'if [ "$1" = pull ]; then echo "denied for {SECRET}" >&2; exit 125; fi\n'
                       f'echo "{SECRET}"')
    failed = container_tools.run_container_tool("podman", ["pull", "r/a:b"], secrets=[SECRET],
                                                check=False)
    assert failed.returncode == 125 and failed.stderr.strip() == "denied for ***"
    ok = container_tools.run_container_tool("podman", ["image", "inspect", "x"],
                                            secrets=[SECRET])
    assert ok.stdout.strip() == SECRET  # a successful run's output is data


def test_input_goes_to_stdin_and_never_to_the_argv(fake_bin):
    fake_bin("podman", 'echo "args: $*"; cat')
    proc = container_tools.run_container_tool("podman", ["secret", "create", "n", "-"],
                                              input=SECRET, secrets=[SECRET])
    assert proc.stdout.splitlines() == ["args: secret create n -", SECRET]


def test_a_hung_tool_times_out(fake_bin):
    fake_bin("podman", "exec sleep 30")
    with pytest.raises(ToolError, match=r"podman logs did not finish within 0\.5s") as exc:
        container_tools.run_container_tool("podman", ["logs", "c"], timeout=0.5)
    assert exc.value.__context__ is None


def test_what_names_the_command(fake_bin):
    fake_bin("podman", "exit 2")
    with pytest.raises(ToolError, match="podman secret create hf failed"):
        container_tools.run_container_tool("podman", ["secret", "create", "hf", "-"],
                                           what="podman secret create hf")


@pytest.mark.parametrize(("args", "words"), [
    (["--override-os", "linux", "--override-arch", "amd64", "copy", "a", "b"], ["copy"]),
    (["image", "inspect", "--format", "{{.Id}}", "x"], ["image", "inspect"]),
    (["--debug", "inspect", "--raw", "docker://x"], ["inspect"]),
    (["--version"], []),
])
def test_subcommand(args, words):
    assert container_tools.subcommand(args) == words


def test_only_container_tools_are_run():
    with pytest.raises(ValueError):
        container_tools.run_container_tool("sh", ["-c", "true"])
