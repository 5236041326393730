"""The benchmark: ociassemble against the floor and the daemonless peer pipeline.

    python3 -m benchmark.run [--scale 100] [--work DIR] [--json benchmark/results.json]

It builds NGC-shaped images (``--scale 100``: the full image holds about 3 GB of files
beyond min: backends of 40 MB to 1.1 GB of binary-like data that gzip shrinks about 2.5x,
one install layer holding them all, prepare layers, a pip layer of 3000 small files),
pushes min and full to a local ``docker-registry`` on loopback, and measures in one run:

1. ociassemble compose, cold (empty store, empty destination repository), ``--repeat``
   times (3), each with a new store and repository: the median is shown, all are kept;
2. the floor (also the median of ``--repeat`` runs): the full image's layers not shared
   with min streamed from the registry and decompressed once with ``igzip -d`` (ISA-L),
   two at a time (the machine's two cores);
3. the peer pipelines, same selection: skopeo copy (min, full) -> umoci unpack (both) -> copy
   the selected trees -> umoci repack -> skopeo copy to the registry; and buildah (vfs
   storage): from min, pull full, copy --from full per tree, commit, push;
4. ociassemble with a different selection and the warm store;
5. ociassemble again, unchanged;
6. layer indexes of full and min made and published once (``ociassemble index --push``), then
   composes from an empty store that find them: the cold selection, the new one, and the
   smallest (core trees and one small backend), each with the bytes the registry sent, the
   selection's share of the install layer and its compressed bytes (from the indexes);
7. peak RSS of each ociassemble run (``/usr/bin/time -v``) and the bytes each read and wrote.

It prints a table and writes JSON. The figures that count are the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures import ngc  # noqa: E402
from ociassemble.oci.model import Index, Manifest, Platform  # noqa: E402
from ociassemble.transport.registry.client import RegistryClient  # noqa: E402
from tests.registryserver import start_registry  # noqa: E402

COLD = ["onnxruntime", "pytorch", "python"]
WARM = ["tensorrt", "python", "identity", "fil"]
SMALLEST = ["identity"]  # the core trees and one small backend: the least a compose copies
CORE = ("bin", "lib", "include", "LICENSE", "TRITON_VERSION", "NVIDIA_Deep_Learning_Container_License.pdf")


def settle() -> None:
    """Flush what earlier steps wrote before a timed step starts: this disk takes ~0.5 GB/s,
    and dirty pages left by one step would otherwise throttle the writes of the next."""
    os.sync()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run under /usr/bin/time -v: wall seconds, peak RSS, exit code, stdout."""
    settle()
    t = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"seconds": wall, "rss_mb": int(m.group(1)) / 1024 if m else None, "stdout": proc.stdout}


def compose(reg: str, store: Path, work: Path, backends: list[str], tag: str,
            repo: str = "bench/out", *extra: str) -> dict[str, Any]:
    args = [a for b in backends for a in ("--backend", b)]
    r = timed([sys.executable, "-m", "ociassemble", "compose", *args, "--image", f"min,{reg}/nvidia/min:24.05",
               "--image", f"full,{reg}/nvidia/full:24.05", "--output-name", f"{reg}/{repo}:{tag}",
               "--work-dir", str(work), "--store-dir", str(store), "--json", "-q", *extra])
    out = json.loads(r.pop("stdout"))
    s = out["stats"]
    r.update(read_mb=s.get("downloaded_bytes", 0) / 1e6, written_mb=s.get("uploaded_bytes", 0) / 1e6,
             memo_hit=bool(s.get("memo_hit")), digest=out["manifest_digest"])
    return r


def served(log: Path, since: int) -> tuple[int, int]:
    """Blob bytes the registry sent since byte ``since`` of its access log, and where the log
    ends now: counted at the registry (Apache combined format: the status, then the bytes)."""
    text = log.read_bytes()
    total = 0
    for line in text[since:].decode("utf-8", "replace").splitlines():
        m = re.search(r'"GET /v2/\S+/blobs/sha256:\S+ HTTP/[\d.]+" (200|206) (\d+)', line)
        if m:
            total += int(m.group(2))
    return total, len(text)


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time, and every run's time: the machine's spread is large."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    picked = dict(ordered[len(ordered) // 2])
    picked["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return picked


def non_shared_layers(host: str) -> list[tuple[str, int]]:
    client = RegistryClient(host, plain_http=True)

    def resolve(repo: str) -> tuple[Manifest, list[str]]:
        raw, mt, _ = client.get_manifest(repo, "24.05")
        if "manifests" in json.loads(raw):
            desc = Index.parse(raw, mt).select(Platform("linux", "amd64"))
            raw, mt, _ = client.get_manifest(repo, desc.digest)
        m = Manifest.parse(raw, mt)
        with client.open_blob(repo, m.config) as r:
            cfg = json.loads(r.read())
        return m, cfg["rootfs"]["diff_ids"]

    _, min_ids = resolve("nvidia/min")
    full, full_ids = resolve("nvidia/full")
    shared = 0
    while shared < len(min_ids) and min_ids[shared] == full_ids[shared]:
        shared += 1
    return [(d.digest, d.size) for d in full.layers[shared:]]


def selected(index_store: Path, layers: list[tuple[str, int]], backends: list[str]) -> dict[str, float]:
    """What a selection holds in full's own layers, from their layer indexes: its bytes, its
    share of the install layer's, its compressed bytes (each layer's bytes of it times that
    layer's compression ratio), and the bytes of the indexes themselves (full's and min's)."""
    prefixes = tuple(f"opt/tritonserver/{c}" for c in CORE) + tuple(f"opt/tritonserver/backends/{b}" for b in backends)
    picked = compressed = share = 0.0
    install = max(layers, key=lambda d: d[1])[0]  # the biggest blob
    for digest, size in layers:
        doc = json.loads((index_store / "lindex" / (digest[7:] + ".json")).read_bytes())
        files = [e for e in doc["entries"] if e["kind"] == "file"]
        plain = max((e["offset"] + e["size"] for e in files), default=0) or 1
        mine = sum(e["size"] for e in files if any(e["path"] == p or e["path"].startswith(p + "/") for p in prefixes))
        picked += mine
        compressed += mine * size / plain
        if digest == install:
            share = mine / plain
    index_bytes = sum(f.stat().st_size for f in (index_store / "lindex").iterdir() if f.suffix in (".json", ".points"))
    return {"selected_mb": picked / 1e6, "selected_share_of_install_layer": share,
            "selected_compressed_mb": compressed / 1e6, "index_mb": index_bytes / 1e6}


def floor(host: str, layers: list[tuple[str, int]]) -> dict[str, Any]:
    """Stream each layer from the registry into igzip -d, two at a time."""
    import requests

    todo = list(layers)
    lock = threading.Lock()

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not todo:
                    return
                digest, _ = todo.pop(0)
            dec = subprocess.Popen(["igzip", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            assert dec.stdin is not None
            with session.get(f"http://{host}/v2/nvidia/full/blobs/{digest}", stream=True, timeout=300) as resp:
                for chunk in resp.iter_content(1 << 20):
                    dec.stdin.write(chunk)
            dec.stdin.close()
            if dec.wait() != 0:
                raise SystemExit("igzip failed")

    settle()
    t = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"seconds": time.monotonic() - t, "read_mb": sum(s for _, s in layers) / 1e6, "rss_mb": None}


def peer(host: str, work: Path, backends: list[str]) -> dict[str, Any]:
    d = work / "peer"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    settle()
    t = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str, cmd: list[str]) -> None:
        s = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True)
        steps[name] = time.monotonic() - s

    for name in ("min", "full"):
        step(f"skopeo copy {name}", ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--override-arch", "amd64",
                                      f"docker://{host}/nvidia/{name}:24.05", f"oci:{d}/{name}:{name}"])
        step(f"umoci unpack {name}", ["umoci", "unpack", "--rootless", "--image", f"{d}/{name}:{name}",
                                      str(d / f"{name}-bundle")])
    s = time.monotonic()
    src, dst = d / "full-bundle/rootfs/opt/tritonserver", d / "min-bundle/rootfs/opt/tritonserver"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    items = [c for c in CORE if (src / c).exists()] + [f"backends/{b}" for b in backends]
    (dst / "backends").mkdir()
    for item in items:
        subprocess.run(["cp", "-a", str(src / item), str(dst / item)], check=True)
    steps["copy trees"] = time.monotonic() - s
    step("umoci repack", ["umoci", "repack", "--image", f"{d}/min:custom", str(d / "min-bundle")])
    step("skopeo copy out", ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{d}/min:custom",
                             f"docker://{host}/bench/peer:1"])
    wall = time.monotonic() - t
    disk = int(subprocess.run(["du", "-sb", str(d)], capture_output=True, text=True).stdout.split()[0])
    shutil.rmtree(d, ignore_errors=True)
    return {"seconds": wall, "steps": steps, "written_mb": disk / 1e6, "rss_mb": None}


def buildah_peer(host: str, work: Path, backends: list[str]) -> dict[str, Any]:
    """The second peer, as a Dockerfile-less buildah user would do it: ``from`` min, ``pull``
    full, ``copy --from`` full per selected tree, ``commit``, ``push``; vfs storage (what a
    rootless build pod without fuse-overlayfs has) in a storage of its own."""
    d = work / "buildah"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    base = ["buildah", "--storage-driver", "vfs", "--root", str(d / "root"), "--runroot", str(d / "run")]
    (d / "auth.json").write_text("{}")  # buildah stats its auth file; no credentials are needed
    env = {**{k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}, "BUILDAH_ISOLATION": "chroot",
           "STORAGE_DRIVER": "vfs", "REGISTRY_AUTH_FILE": str(d / "auth.json")}
    full = f"{host}/nvidia/full:24.05"
    settle()
    t = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str, cmd: list[str]) -> str:
        s = time.monotonic()
        proc = subprocess.run([*base, *cmd], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"buildah step failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        steps[name] = steps.get(name, 0.0) + time.monotonic() - s
        return proc.stdout.strip()

    ctr = step("buildah from min", ["from", "--tls-verify=false", "--arch", "amd64", "--name", "bench",
                                    f"docker://{host}/nvidia/min:24.05"])
    step("buildah pull full", ["pull", "--tls-verify=false", "--arch", "amd64", f"docker://{full}"])
    root = "/opt/tritonserver"
    items = [*CORE, *(f"backends/{b}" for b in backends)]
    for item in items:
        step("buildah copy --from full", ["copy", "--from", full, ctr, f"{root}/{item}", f"{root}/{item}"])
    step("buildah commit", ["commit", "--quiet", ctr, "localhost/bench/buildah:1"])
    step("buildah push", ["push", "--tls-verify=false", "localhost/bench/buildah:1", f"docker://{host}/bench/buildah:1"])
    wall = time.monotonic() - t
    disk = int(subprocess.run(["du", "-sb", str(d)], capture_output=True, text=True).stdout.split()[0])
    subprocess.run([*base, "rm", "--all"], capture_output=True, env=env)
    subprocess.run(["rm", "-rf", str(d)], capture_output=True)  # vfs leaves read-only trees behind
    return {"seconds": wall, "steps": steps, "written_mb": disk / 1e6, "rss_mb": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=100.0, help="fixture size factor (100: ~3 GB beyond min)")
    ap.add_argument("--pip-files", type=int, default=3000)
    ap.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmark" / "results.json")
    ap.add_argument("--skip-peer", action="store_true", help="leave out the (slow) skopeo + umoci pipeline")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the floor and the cold compose (median shown)")
    args = ap.parse_args(argv)
    peers = () if args.skip_peer else ("buildah",)
    for tool in ("docker-registry", "skopeo", "umoci", "igzip", "/usr/bin/time", *peers):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install docker-registry skopeo umoci isal time buildah")
    work = args.work or Path(tempfile.mkdtemp(prefix="ociassemble-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DOCKER_CONFIG"] = str(work / "no-docker-config")

    t = time.monotonic()
    layout = work / "layout"
    shutil.rmtree(layout, ignore_errors=True)
    ngc.build(layout, scale=args.scale, pip_files=args.pip_files, arches=("amd64",))
    gen = time.monotonic() - t
    reg = start_registry(work / "registry", access_log=True)
    try:
        t = time.monotonic()
        ngc.push(layout, ["min", "full"], f"{reg.host}/nvidia")
        push = time.monotonic() - t
        layers = non_shared_layers(reg.host)
        print(f"fixtures: {gen:.0f} s to build, {push:.0f} s to push; full adds {len(layers)} layers, "
              f"{sum(s for _, s in layers) / 1e6:.0f} MB compressed", file=sys.stderr)
        rows: dict[str, dict[str, Any]] = {}
        rows["floor (igzip, 2 streams)"] = median([floor(reg.host, layers) for _ in range(args.repeat)])
        colds = []
        for i in range(args.repeat):  # each with an empty store and a new destination repository
            store = work / f"store-{i}"
            shutil.rmtree(store, ignore_errors=True)
            _, mark = served(reg.log, 0)
            colds.append(compose(reg.host, store, work, COLD, "cold", repo=f"bench/out{i}"))
            colds[-1]["registry_mb"] = served(reg.log, mark)[0] / 1e6
        rows["ociassemble cold"] = median(colds)
        if not args.skip_peer:
            rows["skopeo+umoci pipeline"] = peer(reg.host, work, COLD)
            rows["buildah pipeline (vfs)"] = buildah_peer(reg.host, work, COLD)
        last = f"bench/out{args.repeat - 1}"  # the warm runs reuse the last cold run's store and repository
        rows["ociassemble warm, new selection"] = compose(reg.host, store, work, WARM, "warm", repo=last)
        rows["ociassemble unchanged"] = compose(reg.host, store, work, WARM, "warm", repo=last)
        # the new selection cold (the warm row's yardstick: the same selection from an empty store)
        shutil.rmtree(work / "store-cold-new", ignore_errors=True)
        rows["ociassemble cold, new selection"] = compose(reg.host, work / "store-cold-new", work, WARM, "coldnew",
                                                          "bench/coldnew", "--no-index")
        # layer indexes: made once and published beside full (and min, whose layers the library
        # check reads); then a fresh machine composes
        index_store = work / "index-store"
        shutil.rmtree(index_store, ignore_errors=True)
        runs = [timed([sys.executable, "-m", "ociassemble", "index", f"{reg.host}/nvidia/{name}:24.05", "--push",
                       "--store-dir", str(index_store), "--json"]) for name in ("full", "min")]
        rows["index --push full and min (once)"] = {"seconds": sum(r["seconds"] for r in runs),
                                                    "rss_mb": max(r["rss_mb"] or 0 for r in runs)}
        for name, sel in (("cold selection", COLD), ("new selection", WARM), ("smallest selection", SMALLEST)):
            fresh = work / f"store-indexed-{name.split()[0]}"
            shutil.rmtree(fresh, ignore_errors=True)
            _, mark = served(reg.log, 0)
            row = compose(reg.host, fresh, work, sel, "indexed", repo=f"bench/indexed-{name.split()[0]}")
            row["registry_mb"] = served(reg.log, mark)[0] / 1e6
            row.update(selected(index_store, layers, sel))
            rows[f"fresh store + published index, {name}"] = row
    finally:
        reg.close()

    fl = rows["floor (igzip, 2 streams)"]["seconds"]
    cold = rows["ociassemble cold"]["seconds"]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "scale": args.scale,
        "full_added_compressed_mb": sum(s for _, s in layers) / 1e6,
        "rows": rows,
        "ratios": {
            "cold / floor": cold / fl,
            "peer / cold": rows["skopeo+umoci pipeline"]["seconds"] / cold if not args.skip_peer else None,
            "buildah / cold": rows["buildah pipeline (vfs)"]["seconds"] / cold if not args.skip_peer else None,
            "warm / cold": rows["ociassemble warm, new selection"]["seconds"] / cold,
            "warm new selection / cold new selection": rows["ociassemble warm, new selection"]["seconds"]
            / rows["ociassemble cold, new selection"]["seconds"],
            "indexed cold selection / floor": rows["fresh store + published index, cold selection"]["seconds"] / fl,
            "indexed new selection / floor": rows["fresh store + published index, new selection"]["seconds"] / fl,
            "indexed smallest selection / floor": rows["fresh store + published index, smallest selection"][
                "seconds"] / fl,
            **{f"indexed {name}: fetched / (selected compressed + index)": r["registry_mb"] / (
                r["selected_compressed_mb"] + r["index_mb"]) for name, r in
               ((k.split(", ", 1)[1], v) for k, v in rows.items() if k.startswith("fresh store"))},
            **{f"indexed {name}: share of the install layer": r["selected_share_of_install_layer"] for name, r in
               ((k.split(", ", 1)[1], v) for k, v in rows.items() if k.startswith("fresh store"))},
        },
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{'run':52} {'seconds':>8} {'x floor':>8} {'peak RSS MB':>12} {'read MB':>9} {'written MB':>11} "
          f"{'registry MB':>12}")
    for name, r in rows.items():
        rss = f"{r['rss_mb']:.0f}" if r.get("rss_mb") else "-"
        runs = f"  (runs: {', '.join(f'{x:.1f}' for x in r['all_seconds'])})" if "all_seconds" in r else ""
        sent = f"{r['registry_mb']:.0f}" if "registry_mb" in r else "-"
        print(f"{name:52} {r['seconds']:8.1f} {r['seconds'] / fl:8.2f} {rss:>12} "
              f"{r.get('read_mb', 0):9.0f} {r.get('written_mb', 0):11.0f} {sent:>12}{runs}")
    print(json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
