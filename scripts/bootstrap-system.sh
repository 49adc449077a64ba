#!/usr/bin/env bash
# Make sure the controller can create a virtualenv: the one system prerequisite of Ansible
# itself. Runs as root or through sudo; Debian/Ubuntu (apt) and RHEL/Fedora (dnf).
set -euo pipefail
python=${1:-python3}
if "$python" -m venv --help >/dev/null 2>&1 && "$python" -c 'import ensurepip' 2>/dev/null; then
  exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo ">>> installing the Python venv module ($python lacks it)"
if command -v apt-get >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv python3-pip
elif command -v dnf >/dev/null; then
  $sudo dnf install -y -q python3 python3-pip
else
  echo "error: no apt-get or dnf here; install Python 3.11+ with the venv module, then re-run" >&2
  exit 1
fi
