#!/usr/bin/env bash
# Run pytest with the tool virtualenvs made by the provision stage, and never let
# "no tests collected" (exit 5) pass as success.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home="$root/.modelgate"
export MODELGATE_QUANTIZE_PYTHON="$home/venvs/quantize/bin/python"
export MODELGATE_SERVE_PYTHON="$home/venvs/serve/bin/python"
export MODELGATE_BENCH_BIN_DIR="$home/venvs/bench/bin"
export MODELGATE_STORE="$home/store"
if [ -x "$MODELGATE_QUANTIZE_PYTHON" ]; then
  # The tiny generated model every tool test uses: built once, content-addressed.
  model_json=$("$home/venvs/controller/bin/modelgate" model resolve --source generated \
    --store "$MODELGATE_STORE" --python "$MODELGATE_QUANTIZE_PYTHON") || exit 1
  MODELGATE_TEST_MODEL=$(printf '%s' "$model_json" | "$home/venvs/controller/bin/python" -c \
    'import json,sys; print(json.load(sys.stdin)["path"])')
  export MODELGATE_TEST_MODEL
fi
# a module skipped at import fails under CI (tests/conftest.py): report it and run the rest
"$home/venvs/controller/bin/python" -m pytest --continue-on-collection-errors "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests in: $*" >&2
  exit 1
fi
exit "$rc"
