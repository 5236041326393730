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
    """Every entry under root/top: type, mode, owner, xattrs, bytes hash, link target, link group, mtime.

    Hardlink groups are named by their first member inside the walked tree, and only
    count when two members are inside it: a tree copied on its own cannot keep a link to
    a file outside it, exactly as ``COPY`` cannot. Directory mtimes are left out: creating
    a child changes them during any unpack.
    """
    base = root / top if top else root
    out: dict[str, tuple] = {}  # type: ignore[type-arg]
    if not os.path.lexists(base):
        return out
    paths = [base]
    if base.is_dir() and not base.is_symlink():
        # an explicit stack: os.walk recurses per level in Python 3.11, and trees here may be
        # thousands of directories deep; the order is os.walk's with sorted names
        todo = [base]
        while todo:
            d = todo.pop(0)
            names = sorted(os.listdir(d))
            paths += [d / n for n in names]
            todo[:0] = [d / n for n in names if (d / n).is_dir() and not (d / n).is_symlink()]
    members: dict[int, list[str]] = {}
    stats = {}
    for p in paths:
        st = os.lstat(p)
        stats[p] = st
        if stat.S_ISREG(st.st_mode):
            members.setdefault(st.st_ino, []).append(str(p.relative_to(root)))
    for p in paths:
        st = stats[p]
        rel = str(p.relative_to(root))
        xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False).hex())
                              for k in os.listxattr(p, follow_symlinks=False)))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(p), xattrs, st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), xattrs)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            group = members[st.st_ino]
            out[rel] = ("file", stat.S_IMODE(st.st_mode), xattrs, h, group[0] if len(group) > 1 else "",
                        st.st_mtime_ns)
        else:
            out[rel] = ("other", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), xattrs, st.st_rdev)
    return out


def relocated(fp: dict[str, tuple], old: str, new: str) -> dict[str, tuple]:  # type: ignore[type-arg]
    """The fingerprint of a tree moved from ``old`` to ``new`` (hardlink group names too)."""
    def move(path: str) -> str:
        return new + path[len(old):] if path == old or path.startswith(old + "/") else path

    out = {}
    for k, v in fp.items():
        if v[0] == "file" and v[4]:
            v = (*v[:4], move(v[4]), *v[5:])
        out[move(k)] = v
    return out


def rootless_owner(path: Path) -> tuple[int, int]:
    """uid, gid from umoci's ``user.rootlesscontainers`` xattr (protobuf fields 1 and 2)."""
    try:
        raw = os.getxattr(path, "user.rootlesscontainers", follow_symlinks=False)
    except OSError:
        return (0, 0)
    fields = {1: 0, 2: 0}
    i = 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        value = shift = 0
        while True:
            b = raw[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[tag >> 3] = value
    return fields[1], fields[2]
