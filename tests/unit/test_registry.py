"""Unit tests for registry credentials: the one holder every registry client uses."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from modelgate.errors import ModelGateError
from modelgate.registry import RegistryCredentials, redact

SECRET = "pw-s3cret"
TOKEN = base64.b64encode(f"u:{SECRET}".encode()).decode()


def test_authfile_is_private_holds_the_registry_and_is_removed():
    creds = RegistryCredentials.for_ref("reg.example:5000/a/b:c", "u", SECRET)
    with creds.authfile() as args:
        assert args[0] == "--authfile"
        path = Path(args[1])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert json.loads(path.read_text()) == {"auths": {"reg.example:5000": {"auth": TOKEN}}}
        assert SECRET not in " ".join(args) and TOKEN not in " ".join(args)
    assert not path.exists() and not path.parent.exists()


def test_authfile_is_removed_when_the_block_fails():
    creds = RegistryCredentials("reg.example", "u", SECRET)
    with pytest.raises(RuntimeError), creds.authfile() as args:
        path = Path(args[1])
        raise RuntimeError("the tool failed")
    assert not path.parent.exists()


@pytest.mark.parametrize(("username", "password"), [(None, None), ("", ""), ("", None)])
def test_no_credentials_give_no_authfile(username, password):
    creds = RegistryCredentials("reg.example", username, password)
    assert not creds and creds.basic is None and creds.secrets == []
    with creds.authfile() as args:
        assert args == []


@pytest.mark.parametrize(("username", "password"), [("u", None), ("u", ""), (None, SECRET),
                                                    ("", SECRET)])
def test_one_part_alone_is_refused(username, password):
    with pytest.raises(ModelGateError, match="both") as exc:
        RegistryCredentials("reg.example", username, password)
    assert SECRET not in str(exc.value)


def test_secrets_are_redacted_and_never_shown():
    creds = RegistryCredentials("reg.example", "u", SECRET)
    assert creds.basic == TOKEN and creds.secrets == [SECRET, TOKEN]
    assert creds.redact(f"x {SECRET} y {TOKEN}") == "x *** y ***"
    assert redact(f"a {SECRET}", ["", SECRET]) == "a ***"
    assert SECRET not in repr(creds) and TOKEN not in repr(creds)
