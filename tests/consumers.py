"""Independent consumers of our output: skopeo and umoci, and a tree fingerprint.

umoci --rootless cannot chown, so it records non-root ownership in the
``user.rootlesscontainers`` xattr; the fingerprint includes that xattr, which makes
ownership part of every comparison.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path


def skopeo_inspect(ref: str, raw: bool = False, config: bool = False) -> dict:  # type: ignore[type-arg]
    args = ["skopeo", "inspect", "--tls-verify=false"]
    if raw:
        args.append("--raw")
    if config:
        args.append("--config")
    out = subprocess.run([*args, ref], check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def unpack(ref: str, dest: Path, arch: str = "amd64", recompress: bool = False) -> Path:
    """skopeo copy (docker:// or oci:) into an OCI layout, then umoci unpack --rootless.

    ``recompress`` has skopeo rewrite layers as gzip first: umoci 0.4 cannot read zstd.
    """
    layout = dest.with_name(dest.name + "-layout")
    extra = ["--dest-compress", "--dest-compress-format", "gzip"] if recompress else []
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--override-arch", arch, *extra,
                    ref, f"oci:{layout}:img"], check=True, capture_output=True, timeout=300)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:img", str(dest)], check=True,
                   capture_output=True, timeout=300)
    return dest / "rootfs"


def fingerprint(root: Path, top: str = "") -> dict[str, tuple]:  # type: ignore[type-arg]
    """Every entry under root/top: type, mode, owner xattr, bytes hash, link target, link group."""
    base = root / top if top else root
    out: dict[str, tuple] = {}  # type: ignore[type-arg]
    inodes: dict[int, str] = {}
    if not os.path.lexists(base):
        return out
    paths = [base]
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            paths.append(Path(dirpath) / n)
    for p in paths:
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        try:
            owner = os.getxattr(p, "user.rootlesscontainers", follow_symlinks=False).hex()
        except OSError:
            owner = ""
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(p), owner)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), owner)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            group = ""
            if st.st_nlink > 1:
                group = inodes.setdefault(st.st_ino, rel)
            out[rel] = ("file", stat.S_IMODE(st.st_mode), owner, h, group)
        else:
            out[rel] = ("other", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), owner)
    return out


def relocated(fp: dict[str, tuple], old: str, new: str) -> dict[str, tuple]:  # type: ignore[type-arg]
    return {k.replace(old, new, 1): v for k, v in fp.items()}
