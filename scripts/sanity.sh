#!/usr/bin/env bash
# ansible-test sanity on the collection as it ships (what Galaxy and Automation Hub run):
# the tracked files are copied, built with ansible-galaxy, installed under a temporary
# ansible_collections/modelgate/pipeline, and tested there.
#
#   scripts/sanity.sh [ansible-test sanity options]     e.g. --test validate-modules
#
# MODELGATE_SANITY_BIN: the bin directory holding ansible-test (default: the controller
# virtualenv's), so another ansible-core can be tried from its own virtualenv.
# MODELGATE_SANITY_DIST: a directory to leave a copy of the built tarball in (optional).
#
# ansible-test runs each test in a virtualenv of its own, with the requirements it pins
# installed from PyPI. Those virtualenvs start empty and ansible-test seeds pip into them with
# a get-pip script it downloads from ci-files.testing.ansible.com; here that script is a
# stand-in that seeds pip with the standard library's ensurepip and then installs the pip
# version asked for from the package index. The virtualenvs are kept under
# .modelgate/ansible-test (HOME for ansible-test), so later runs reuse them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MODELGATE_SANITY_BIN:-$root/.modelgate/venvs/controller/bin}
export PATH="$bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard) |
  while IFS= read -r -d '' f; do
    if [ -e "$root/$f" ] || [ -L "$root/$f" ]; then
      (cd "$root" && cp --parents -P -- "$f" "$work/src/")
    fi
  done
"$bin/ansible-galaxy" collection build "$work/src" --output-path "$work/dist" >/dev/null
tarball=$(ls "$work"/dist/modelgate-pipeline-*.tar.gz)
if [ -n "${MODELGATE_SANITY_DIST:-}" ]; then cp "$tarball" "$MODELGATE_SANITY_DIST/"; fi
# --force: the collection link of `make bootstrap` would otherwise count as installed already
"$bin/ansible-galaxy" collection install "$tarball" -p "$work/collections" --no-deps --force \
  >/dev/null 2>&1

home="$root/.modelgate/ansible-test"
pip_version=$("$bin/python" - <<'EOF'
import pathlib, re, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
EOF
)
mkdir -p "$home/.ansible/test/cache" "$home/.config/pip"
# ansible-test runs pip with HOME and PATH alone: the pip settings of this environment (the
# user's pip.conf, PIP_* variables such as an index or a CA bundle) go into its HOME's pip.conf.
"$bin/python" - "$home/.config/pip/pip.conf" <<'PIPCONF'
import configparser, os, sys
conf = configparser.ConfigParser(interpolation=None)
conf.read([os.path.expanduser(p) for p in ("~/.pip/pip.conf", "~/.config/pip/pip.conf")])
if not conf.has_section("global"):
    conf.add_section("global")
for key, value in os.environ.items():
    if key.startswith("PIP_") and key not in ("PIP_CONFIG_FILE", "PIP_BREAK_SYSTEM_PACKAGES"):
        conf.set("global", key[4:].lower().replace("_", "-"), value)
with open(sys.argv[1], "w", encoding="utf-8") as out:
    conf.write(out)
PIPCONF
cat > "$home/.ansible/test/cache/get_pip_${pip_version//./_}.py" <<EOF
# Stand-in for get-pip-${pip_version}.py (written by scripts/sanity.sh): ensurepip, then pip.
# (ensurepip runs in a process of its own: it points PIP_CONFIG_FILE at /dev/null for its own.)
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])
if "--no-setuptools" in sys.argv:
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "setuptools"])
EOF

python_version=$("$bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cd "$work/collections/ansible_collections/modelgate/pipeline"
echo ">>> ansible-test sanity (ansible-core $("$bin/python" -c 'import ansible; print(ansible.__version__)'), Python $python_version)"
HOME="$home" "$bin/ansible-test" sanity --local --python "$python_version" --color no "$@"
