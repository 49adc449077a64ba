"""The ``modelgate`` command line: every command prints JSON, so Ansible and CI can read it."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from modelgate.errors import ModelGateError

# Each module registers its own sub-commands through ``register_cli(subparsers)``;
# imported lazily so a tool virtualenv needs only the dependencies of what it runs.
COMMAND_MODULES = (
    "modelgate.model_source",
    "modelgate.preflight",
    "modelgate.quantize",
    "modelgate.modelcar",
    "modelgate.registry",
    "modelgate.serving",
    "modelgate.kserve",
    "modelgate.loadtest",
    "modelgate.accuracy",
    "modelgate.fidelity",
    "modelgate.gate",
    "modelgate.report",
    "modelgate.delay_proxy",
    "modelgate.verdict_text",
)


def emit(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """Build the argument parser from every command module that imports here."""
    parser = argparse.ArgumentParser(prog="modelgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a module whose optional dependency is absent here
            if exc.name and exc.name.startswith("modelgate"):
                raise
            continue
        module.register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None, modules: Sequence[str] = COMMAND_MODULES) -> int:
    """Run one command; exit 2 with a JSON error on bad input."""
    args = build_parser(modules).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModelGateError as exc:
        emit(exc.to_dict())
        return 2
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # an input file that is missing or not what it should be: bad input, not a crash
        emit({"error": f"cannot read an input file: {exc}", "field": _field_of(exc, args),
              "fix": "check the path and that the file is the kind the option asks for"})
        return 2
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # parsed, but not the shape the command reads (a JSON list where an object belongs,
        # a missing key): the command's own checks name the usual cases; this names the rest
        emit({"error": f"an input is not the shape {args.command} reads "
                       f"({type(exc).__name__}: {exc})", "field": _field_of(exc, args),
              "fix": f"see modelgate {args.command} --help for what each option takes"})
        return 2


def _field_of(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The option whose file the error is about, when its path is in the error."""
    text = str(exc)
    for key, value in sorted(vars(args).items()):
        # only path-like values: a short name (a variant "x") would match any message
        if isinstance(value, str) and ("/" in value or "." in value) and value in text:
            return "--" + key.replace("_", "-")
    return None


if __name__ == "__main__":
    sys.exit(main())
