#!/usr/bin/env bash
# The execution environment's build context: the collection's tarball (ansible-galaxy
# collection build, into .modelgate/ee/collection, where execution-environment.yml takes it
# from), then `ansible-builder create` into CONTEXT (default .modelgate/ee/context).
# `make ee` builds the image from it with podman.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.modelgate/venvs/controller/bin"
context=${1:-$root/.modelgate/ee/context}
version=$("$bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' "$root/galaxy.yml")
if ! grep -q "modelgate-pipeline-$version.tar.gz" "$root/execution-environment.yml"; then
  echo "error: execution-environment.yml does not install modelgate-pipeline-$version.tar.gz" \
       "(galaxy.yml's version); make its galaxy entry name that tarball" >&2
  exit 2
fi
rm -rf "$root/.modelgate/ee/collection"
mkdir -p "$root/.modelgate/ee/collection"
echo ">>> collection tarball (galaxy.yml version $version)"
(cd "$root" && "$bin/ansible-galaxy" collection build --force \
   --output-path "$root/.modelgate/ee/collection" >/dev/null)
echo ">>> build context: $context"
(cd "$root" && "$bin/ansible-builder" create -f execution-environment.yml -c "$context" >/dev/null)
echo "$context"
