"""Benchmark: packaging a checkpoint as a modelcar, ours vs podman build vs olot vs cp -r.

Generates a synthetic checkpoint (random, incompressible shards like real weights + small
JSON files), starts a local registry, and times in one run:

  cp -r                 the floor: read + write every byte once
  modelgate             build_modelcar (uncompressed layer per shard) + push_modelcar (native
                        OCI client, parallel uploads); the same layout pushed by skopeo copy
                        to a second, empty registry for comparison
  olot                  olot over a copy of the base layout + skopeo copy
  podman build + push   Containerfile with one COPY per shard, --timestamp 0, then podman push

then the bytes each re-push of an unchanged image and each push after changing one shard adds
to the registry (counted from the registry's blob store), the registry's own CPU time during
each push (its digest check + writes: the part no client can avoid), and the issue's goals as
PASS/MISS lines. Needs docker-registry, skopeo,
podman, /bin/busybox; olot when --olot points at its CLI (default: `olot` on PATH).

    flock /tmp/modelgate-heavy.lock python bench/modelcar.py --size-gib 1

Disk: about 8x --size-gib under --workdir (checkpoint, copies, layouts, registry) plus podman
storage; the work directory is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from modelgate import modelcar, registry
from modelgate.digest import tree_files

MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def registry_bytes(data_dir: Path) -> int:
    """Bytes of all blobs the registry stores."""
    root = data_dir / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in root.rglob("data")) if root.exists() else 0


def make_checkpoint(root: Path, size: int, shards: int) -> None:
    """Random shards (incompressible, like trained weights) plus small config/tokenizer files."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "nemotron_h"}) + "\n")
    (root / "tokenizer.json").write_bytes(os.urandom(2 * MIB))
    per = size // shards
    for i in range(shards):
        with (root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors").open("wb") as f:
            left = per
            while left:
                n = min(left, 64 * MIB)
                f.write(os.urandom(n))
                left -= n


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN201
    t = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr[-2000:]}")
    return proc


def flip_byte(path: Path, offset: int = 0) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def podman_build_push(ck: Path, containerfile: Path, ref: str) -> tuple[float, float]:
    __, build_s = timed(sh, "podman", "build", "--timestamp", "0", "--tls-verify=false",
                        "-q", "-f", str(containerfile), "-t", ref, str(ck))
    __, push_s = timed(sh, "podman", "push", "-q", "--tls-verify=false", ref)
    return build_s, push_s


def main() -> int:
    """Run the benchmark once and print its results as JSON and a table."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4.0, help="total shard size")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/modelgate-bench-modelcar")
    ap.add_argument("--port", type=int, default=18620,
                    help="local registry port (the skopeo comparison uses port + 1)")
    ap.add_argument("--parallel", type=int, default=modelcar.DEFAULT_PARALLEL,
                    help="parallel blob uploads of the native push")
    ap.add_argument("--olot", default=shutil.which("olot") or "/tmp/probe/ctl/bin/olot")
    ap.add_argument("--skip-podman", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    addr = f"127.0.0.1:{args.port}"
    repo = f"{addr}/bench"
    size = int(args.size_gib * (1 << 30))
    res: dict = {"size_bytes": size, "shards": args.shards}
    ck = work / "ckpt"
    __, res["generate_s"] = timed(make_checkpoint, ck, size, args.shards)
    reg_dir = work / "registry"
    reg_pid = registry.ensure_registry(addr, reg_dir, work / "state")["pid"]
    addr2 = f"127.0.0.1:{args.port + 1}"
    reg2_pid = registry.ensure_registry(addr2, work / "registry2", work / "state2")["pid"]
    podman_refs: list[str] = []
    try:
        # floor
        __, res["cp_s"] = timed(sh, "cp", "-r", str(ck), str(work / "cp"))
        shutil.rmtree(work / "cp")

        base = work / "base"
        modelcar.build_busybox_base(base)

        # ours
        out = work / "ours"
        img, res["ours_build_s"] = timed(modelcar.build_modelcar, ck, base, out)
        cpu = cpu_seconds(reg_pid)
        p1, res["ours_push_s"] = timed(modelcar.push_modelcar, out, f"{repo}/ours:v1",
                                       tls_verify=False, parallel=args.parallel)
        res["ours_push_registry_cpu_s"] = cpu_seconds(reg_pid) - cpu
        res["ours_push_uploaded_bytes"] = p1.uploaded_bytes
        res["ours_total_s"] = res["ours_build_s"] + res["ours_push_s"]
        # the same layout through skopeo copy, into the second (empty) registry
        cpu = cpu_seconds(reg2_pid)
        __, res["skopeo_push_s"] = timed(modelcar.push_modelcar, out, f"{addr2}/bench/ours:v1",
                                         tls_verify=False, client="skopeo")
        res["skopeo_push_registry_cpu_s"] = cpu_seconds(reg2_pid) - cpu
        res["skopeo_total_s"] = res["ours_build_s"] + res["skopeo_push_s"]
        res["ours_manifest"] = img.manifest_digest
        img2, res["ours_rebuild_unchanged_s"] = timed(modelcar.build_modelcar, ck, base, out)
        assert img2.manifest_digest == img.manifest_digest and not img2.changed
        before = registry_bytes(reg_dir)
        again, res["ours_repush_s"] = timed(modelcar.push_modelcar, out, f"{repo}/ours:v1",
                                            tls_verify=False)
        res["ours_repush_changed"] = again.changed
        res["ours_repush_uploaded_bytes"] = again.uploaded_bytes
        res["ours_repush_registry_bytes"] = registry_bytes(reg_dir) - before

        # olot: layers on top of a copy of the base layout, then skopeo copy
        if args.olot and Path(args.olot).exists():
            for run in (1, 2):
                layout = work / f"olot{run}"
                shutil.copytree(base, layout)
                files = [str(p) for __, p in tree_files(ck)]  # what our build packs
                __, build_s = timed(sh, args.olot, "--root-dir", str(ck), str(layout), *files)
                res[f"olot_manifest_{run}"] = modelcar.read_layout_manifest(layout)[0]
                if run == 1:
                    res["olot_build_s"] = build_s
                    __, res["olot_push_s"] = timed(
                        sh, "skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}",
                        f"docker://{repo}/olot:v1")
                    res["olot_total_s"] = res["olot_build_s"] + res["olot_push_s"]
                    time.sleep(1.1)  # a later second: shows whether olot's output depends on it
                shutil.rmtree(layout)
            res["olot_reproducible"] = res["olot_manifest_1"] == res["olot_manifest_2"]

        # podman build (Containerfile COPY, one per shard) + podman push
        if not args.skip_podman:
            modelcar.push_modelcar(base, f"{repo}/base:v1", tls_verify=False)
            sizes = {p.name: p.stat().st_size for p in ck.iterdir()}
            small = sorted(n for n, s in sizes.items() if s < modelcar.SHARD_THRESHOLD)
            large = sorted(n for n, s in sizes.items() if s >= modelcar.SHARD_THRESHOLD)
            lines = [f"FROM {repo}/base:v1", f"COPY {' '.join(small)} /models/"]
            lines += [f"COPY {name} /models/" for name in large]
            containerfile = work / "Containerfile"
            containerfile.write_text("\n".join(lines) + "\n")
            ref = f"{repo}/podman:v1"
            podman_refs.append(ref)
            res["podman_build_s"], res["podman_push_s"] = podman_build_push(ck, containerfile, ref)
            res["podman_total_s"] = res["podman_build_s"] + res["podman_push_s"]
            before = registry_bytes(reg_dir)
            __, res["podman_repush_s"] = timed(sh, "podman", "push", "-q", "--tls-verify=false",
                                               ref)
            res["podman_repush_registry_bytes"] = registry_bytes(reg_dir) - before

        # one shard changes
        shard = ck / f"model-00001-of-{args.shards:05d}.safetensors"
        flip_byte(shard, 4096)
        res["shard_bytes"] = shard.stat().st_size
        img3, res["ours_one_shard_build_s"] = timed(modelcar.build_modelcar, ck, base, out)
        res["ours_one_shard_new_layer_bytes"] = sum(
            layer.size for layer in img3.layers
            if layer.digest not in {x.digest for x in img.layers})
        before = registry_bytes(reg_dir)
        p3, res["ours_one_shard_push_s"] = timed(modelcar.push_modelcar, out, f"{repo}/ours:v2",
                                                 tls_verify=False)
        res["ours_one_shard_registry_bytes"] = registry_bytes(reg_dir) - before
        res["ours_one_shard_uploaded_bytes"] = p3.uploaded_bytes
        if not args.skip_podman:
            ref = f"{repo}/podman:v2"
            podman_refs.append(ref)
            before = registry_bytes(reg_dir)
            b, p = podman_build_push(ck, containerfile, ref)
            res["podman_one_shard_build_s"], res["podman_one_shard_push_s"] = b, p
            res["podman_one_shard_registry_bytes"] = registry_bytes(reg_dir) - before
    finally:
        for ref in podman_refs:
            subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, check=False)
        subprocess.run(["podman", "rmi", "-f", f"{repo}/base:v1"], capture_output=True,
                       check=False)
        registry.stop_registry(addr, work / "state")
        registry.stop_registry(addr2, work / "state2")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(res, indent=2, sort_keys=True))
    floor = res["cp_s"]
    print(f"\n{'method':<22}{'build s':>9}{'push s':>9}{'total s':>9}{'x cp -r':>9}")
    print(f"{'cp -r (floor)':<22}{'':>9}{'':>9}{floor:9.1f}{1.0:9.2f}")
    res.setdefault("skopeo_build_s", res["ours_build_s"])
    for key, label in (("ours", "modelgate (native)"), ("skopeo", "modelgate+skopeo"),
                       ("olot", "olot+skopeo"), ("podman", "podman build+push")):
        if f"{key}_total_s" in res:
            print(f"{label:<22}{res[f'{key}_build_s']:9.1f}{res[f'{key}_push_s']:9.1f}"
                  f"{res[f'{key}_total_s']:9.1f}{res[f'{key}_total_s'] / floor:9.2f}")
    print(f"\nregistry CPU during the push: native {res['ours_push_registry_cpu_s']:.1f} s, "
          f"skopeo {res['skopeo_push_registry_cpu_s']:.1f} s")
    # The registry digests and stores every byte it receives; no client can push faster than
    # that work spread over all CPUs. cp -r does none of it.
    cpus = len(os.sched_getaffinity(0))
    reg_floor = res["ours_push_registry_cpu_s"] / cpus
    print(f"the registry's own work alone, spread over {cpus} CPUs: {reg_floor:.1f} s = "
          f"{reg_floor / floor:.1f}x cp -r (a floor for any client pushing to this registry)")
    res["registry_floor_s"] = round(reg_floor, 2)
    print(f"re-push unchanged: {res['ours_repush_registry_bytes']} bytes added; one shard "
          f"changed: {res['ours_one_shard_uploaded_bytes']} bytes uploaded, "
          f"{res['ours_one_shard_registry_bytes']} added (shard layer "
          f"{res['ours_one_shard_new_layer_bytes']})\n")
    for ok, goal in goals(res):
        print(f"{'PASS' if ok else 'MISS'}  {goal}")
    return 0


def goals(res: dict) -> list[tuple[bool, str]]:
    """The issue's goals, each (met?, what and the measured numbers)."""
    ours, floor = res["ours_total_s"], res["cp_s"]
    out = []
    if "podman_total_s" in res:
        speedup = res["podman_total_s"] / ours
        out.append((speedup >= 2.0, f"at least 2x faster than podman build+push: "
                                    f"{speedup:.2f}x ({ours:.1f} s vs "
                                    f"{res['podman_total_s']:.1f} s)"))
    out.append((ours <= 2.0 * floor, f"within 2x of cp -r: {ours / floor:.2f}x "
                                     f"({ours:.1f} s vs {floor:.1f} s)"))
    out.append((not res["ours_repush_changed"] and res["ours_repush_registry_bytes"] == 0
                and res["ours_repush_uploaded_bytes"] == 0,
                f"re-push of an unchanged image uploads 0 layer bytes: "
                f"{res['ours_repush_uploaded_bytes']} sent, "
                f"{res['ours_repush_registry_bytes']} added"))
    layer = res["ours_one_shard_new_layer_bytes"]
    # the registry also gains the new config and manifest (a few KiB)
    out.append((res["ours_one_shard_uploaded_bytes"] == layer
                and 0 <= res["ours_one_shard_registry_bytes"] - layer < 64 * 1024,
                f"one changed shard uploads only that shard: "
                f"{res['ours_one_shard_uploaded_bytes']} bytes sent, shard layer {layer}"))
    return out


if __name__ == "__main__":
    sys.exit(main())
