"""The Triton preset: compose.py's semantics turned into a :class:`Recipe`.

Mirrors ``Dockerfile.compose`` as compose.py and build.py write it (GPU and CPU-only),
except that nothing is run: the system dependencies compose.py installs with RUN steps are
taken from the full image's own layers (NVIDIA's build of those same steps), see
:mod:`ociassemble.engine.assemble`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ociassemble.errors import SelectionError, UsageError
from ociassemble.layers.spec import LocalAdd, TreeCopy
from ociassemble.layers.tree import Tree, at_or_under, resolve
from ociassemble.oci.changeset import DIR
from ociassemble.oci.model import ImageConfig
from ociassemble.oci.reference import redact
from ociassemble.presets.dockerfile import parse
from ociassemble.text import printable

ROOT = "opt/tritonserver"
CORE_ITEMS = ("LICENSE", "TRITON_VERSION", "NVIDIA_Deep_Learning_Container_License.pdf", "bin", "lib", "include")
CORE_REQUIRED = ("bin", "lib")
KINDS = (("backend", "backends"), ("repoagent", "repoagents"), ("cache", "caches"))
TRITON_UID = TRITON_GID = 1000
NGC = "nvcr.io/nvidia/tritonserver"
IMAGE_ROLES = ("min", "full", "gpu-min")

# CPU-only + pytorch: CUDA pieces compose.py copies from the gpu-min image.
STUB_LIBS = ("cusparse", "cusolver", "curand", "cufft", "cublas", "cublasLt")
CUDA_RUNTIME_LIBS = ("cudart", "cupti", "nvJitLink", "cufile", "nvrtc", "cusparseLt", "nvshmem_host")
HPCX_LIBS = ("opt/hpcx/ucc/lib/libucc.so.1", "opt/hpcx/ucx/lib/libucm.so.0", "opt/hpcx/ucx/lib/libucp.so.0",
             "opt/hpcx/ucx/lib/libucs.so.0", "opt/hpcx/ucx/lib/libuct.so.0")
SYSTEM_LIBS = ("cudnn", "nccl")


@dataclass
class TritonSelection:
    backends: list[str] = field(default_factory=list)
    repoagents: list[str] = field(default_factory=list)
    caches: list[str] = field(default_factory=list)
    enable_gpu: bool = True

    def names(self, kind: str) -> list[str]:
        return {"backend": self.backends, "repoagent": self.repoagents, "cache": self.caches}[kind]

    @property
    def needs_gpu_min(self) -> bool:
        return not self.enable_gpu and any(b in self.backends for b in ("pytorch", "tensorflow", "tensorflow2"))


def image_refs(images: list[str], container_version: str | None, enable_gpu: bool,
               selection: TritonSelection) -> dict[str, str]:
    """The min/full(/gpu-min) references, as compose.py derives them (--image wins)."""
    refs: dict[str, str] = {}
    for item in images:
        role, sep, ref = item.partition(",")
        if not sep or not ref or "," in ref:
            raise UsageError(f"--image {redact(item)!r} must be <name>,<reference> with name min, full or gpu-min")
        if role not in IMAGE_ROLES:
            raise UsageError(f"--image name {role!r} is not one of min, full, gpu-min")
        if role in refs:
            raise UsageError(f"--image {role} is given twice")
        if any(ch.isspace() or ord(ch) < 0x20 for ch in ref):
            raise UsageError(f"--image {redact(item)!r}: a reference holds no whitespace or control characters")
        refs[role] = ref
    if images:
        missing = [r for r in ("min", "full") if r not in refs]
        if missing:
            raise UsageError(
                f"--image is missing {' and '.join(missing)}: give both --image min,REF and --image full,REF "
                "(or use --container-version alone)"
            )
    elif container_version:
        if not re.match(r"^[0-9]{2}\.[0-9]{2}$", container_version):
            raise UsageError(f"--container-version {container_version!r} is not of the form YY.MM (e.g. 24.05)")
        if enable_gpu:
            refs = {"full": f"{NGC}:{container_version}-py3", "min": f"{NGC}:{container_version}-py3-min"}
        else:
            refs = {"full": f"{NGC}:{container_version}-cpu-only-py3", "min": "ubuntu:22.04"}
    else:
        raise UsageError("say which images to use: --container-version YY.MM, or --image min,REF --image full,REF")
    if selection.needs_gpu_min and "gpu-min" not in refs:
        if not container_version:
            raise UsageError(
                "a CPU-only image with the pytorch backend needs CUDA libraries from a gpu-min image: "
                "add --image gpu-min,REF (or --container-version)"
            )
        refs["gpu-min"] = f"{NGC}:{container_version}-py3-min"
    return refs


@dataclass
class TritonFacts:
    """What compose.py reads from the full image with docker inspect."""

    version: str
    container_version: str
    build_id: str
    build_ref: str
    gpu: bool


def read_facts(min_cfg: ImageConfig, full_cfg: ImageConfig, enable_gpu: bool, full_name: str,
               min_name: str) -> TritonFacts:
    version = full_cfg.env_value("TRITON_SERVER_VERSION") or ""
    container_version = full_cfg.env_value("NVIDIA_TRITON_SERVER_VERSION") or ""
    if not version or not container_version:
        raise SelectionError(
            f"full image {full_name} has no TRITON_SERVER_VERSION / NVIDIA_TRITON_SERVER_VERSION in its "
            "environment: it is not a Triton server image. Check --image full,REF"
        )
    flag = full_cfg.env_value("TRITON_SERVER_GPU_ENABLED")
    gpu = flag == "1" if flag is not None else full_cfg.env_value("CUDA_VERSION") is not None
    if gpu != enable_gpu:
        raise UsageError(
            f"full image {full_name} was built with TRITON_SERVER_GPU_ENABLED={int(gpu)} but you are "
            f"composing with {'--enable-gpu' if enable_gpu else '--no-enable-gpu'}; make them agree"
        )
    if enable_gpu and min_cfg.env_value("CUDA_VERSION") is None:
        raise UsageError(
            f"composing with GPU support, but min image {min_name} has no CUDA_VERSION: it is not a "
            "CUDA image. Use the matching -py3-min image"
        )
    labels = full_cfg.labels
    for name, value in (("TRITON_SERVER_VERSION", version), ("NVIDIA_TRITON_SERVER_VERSION", container_version),
                        ("com.nvidia.build.id", labels.get("com.nvidia.build.id", "")),
                        ("com.nvidia.build.ref", labels.get("com.nvidia.build.ref", ""))):
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise SelectionError(f"full image {full_name} has control characters in its {name} "
                                 f"({printable(value)}); Dockerfile.compose cannot carry it")
    return TritonFacts(version, container_version, labels.get("com.nvidia.build.id", ""),
                       labels.get("com.nvidia.build.ref", ""), gpu)


def available(tree: Tree, kind_dir: str) -> list[str]:
    node = tree.get(f"{ROOT}/{kind_dir}")
    if node is None or node.children is None:
        return []
    return sorted(n for n, c in node.children.items() if c.kind in (DIR, "symlink"))


def no_triton_root(full_name: str) -> SelectionError:
    return SelectionError(
        f"full image {full_name} has no /{ROOT} in the layers it adds to min; it is not a Triton "
        "image, or min and full are swapped"
    )


def check_selection(tree: Tree, sel: TritonSelection, full_name: str) -> None:
    """Unknown names fail here, before any layer is written, listing what the image has."""
    if tree.get(ROOT) is None:
        raise no_triton_root(full_name)
    for kind, kdir in KINDS:
        names = sel.names(kind)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"--{kind} {', '.join(dupes)} is given more than once")
        have = available(tree, kdir)
        missing = [n for n in names if n not in have]
        if missing:
            raise SelectionError(
                f"full image {full_name} has no {kind} {', '.join(repr(m) for m in missing)}; "
                f"it has: {', '.join(printable(h) for h in have) or 'none'}"
            )
        if kind == "backend" and "vllm" in names and "python" not in names:
            raise UsageError("the vllm backend runs on the python backend: add --backend python")


def _cuda_arch(arch: str) -> tuple[str, str]:
    """(CUDA targets dir arch, Debian multiarch prefix) for an image architecture."""
    return ("sbsa", "aarch64") if arch == "arm64" else ("x86_64", "x86_64")


def _versioned(tree: Tree, directory: str, lib: str) -> list[str]:
    """Names ``lib<lib>.so.<N>`` that exist in ``directory`` of the gpu-min tree."""
    node = tree.get(directory)
    if node is None or node.children is None:
        return []
    pat = re.compile(rf"^lib{re.escape(lib)}\.so\.([0-9]+)$")
    return sorted(n for n in node.children if pat.match(n))


def cuda_copies(gpu_tree: Tree, arch: str, gpu_min_name: str) -> list[TreeCopy]:
    """compose.py's CPU-only pytorch block: CUDA stubs and runtime libraries from gpu-min.

    Versioned names are taken from what gpu-min really has (not from a table keyed by the
    release), so the sonames always match the libraries the backend was linked against.
    """
    tarch, larch = _cuda_arch(arch)
    lib64 = "usr/local/cuda/lib64"
    copies: list[TreeCopy] = []
    missing: list[str] = []
    for lib in STUB_LIBS:
        stub = f"{lib64}/stubs/lib{lib}.so"
        names = (_versioned(gpu_tree, lib64, lib)
                 or _versioned(gpu_tree, f"usr/local/cuda/targets/{tarch}-linux/lib", lib))
        if resolve(gpu_tree, stub) is None or not names:
            missing.append(f"/{stub}")
            continue
        for name in names:
            copies.append(TreeCopy(stub, f"{lib64}/stubs/{name}", image="gpu-min"))
    for lib in CUDA_RUNTIME_LIBS:
        for name in _versioned(gpu_tree, lib64, lib):
            copies.append(TreeCopy(f"{lib64}/{name}", f"usr/local/cuda/targets/{tarch}-linux/lib/{name}",
                                   image="gpu-min"))
    for path in HPCX_LIBS:
        if resolve(gpu_tree, path) is not None:
            copies.append(TreeCopy(path, path, image="gpu-min"))
    for lib in SYSTEM_LIBS:
        d = f"usr/lib/{larch}-linux-gnu"
        for name in _versioned(gpu_tree, d, lib):
            copies.append(TreeCopy(f"{d}/{name}", f"{d}/{name}", image="gpu-min"))
    if missing:
        raise SelectionError(
            f"gpu-min image {gpu_min_name} lacks the CUDA stubs {', '.join(missing)} (or their versioned "
            "libraries); use the -py3-min image of the same release as --image gpu-min,REF"
        )
    return copies


@dataclass(frozen=True)
class BaseChoice:
    """What the result stands on, so that Dockerfile.compose describes the image produced.

    ``kind`` is ``"min"`` (min's layers, then ``system`` layers of full: NVIDIA's own run of
    compose.py's RUN steps) or ``"full"`` (full's ``system`` layers below its first
    /opt/tritonserver layer, because min is not the image full was built on).
    """

    kind: str
    system: int  # layers carried from full
    shared: int  # of min's layers, how many full shares
    min_layers: int
    no_system_reason: str = ""  # why none are carried, when none are


@dataclass
class Found:
    """What the full (and gpu-min) image holds that Dockerfile.compose copies only when it is
    there, so that the file lists exactly what the real run finds."""

    core: list[str]  # of CORE_ITEMS
    entrypoint: bool  # /opt/nvidia/entrypoint.d (GPU) or /opt/nvidia (CPU-only)
    serve: bool  # SageMaker's /usr/bin/serve
    cuda: list[TreeCopy]  # CPU-only pytorch: from gpu-min


# before any layer is read: everything that may be there (the draft that says which trees to read)
DRAFT = Found(list(CORE_ITEMS), True, True, [])


def extras_dir(sel: TritonSelection) -> str:
    return "opt/nvidia/entrypoint.d" if sel.enable_gpu else "opt/nvidia"


def found_in(sel: TritonSelection, full_tree: Tree, gpu_tree: Tree | None, arch: str, gpu_min_name: str) -> Found:
    return Found(
        [item for item in CORE_ITEMS if item in CORE_REQUIRED or resolve(full_tree, f"{ROOT}/{item}") is not None],
        resolve(full_tree, extras_dir(sel)) is not None,
        full_tree.get("usr/bin/serve") is not None,
        cuda_copies(gpu_tree, arch, gpu_min_name) if gpu_tree is not None and sel.needs_gpu_min else [],
    )


def wanted(sel: TritonSelection) -> list[str]:
    """The trees of full whose bodies a run keeps (known before any layer is read)."""
    tops = [f"{ROOT}/{item}" for item in CORE_ITEMS]
    tops += [f"{ROOT}/{kdir}/{name}" for kind, kdir in KINDS for name in sel.names(kind)]
    return [*tops, extras_dir(sel), "usr/bin/serve"]


def component(dest: str) -> str:
    """Triton's component a path of the image belongs to (as the check-libs report names
    them), or "" outside /opt/tritonserver."""
    if not at_or_under(dest, ROOT) or dest == ROOT:
        return ""
    parts = dest[len(ROOT) + 1:].split("/")
    for kind, kdir in KINDS:
        if parts[0] == kdir and len(parts) >= 2:
            return f"{kind} {parts[1]}"
    return "triton core"


def _literal(value: str) -> str:
    """A double-quoted Dockerfile word that stands for exactly ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _ref(ref: str) -> str:
    """An image reference as a FROM word: a ``$`` stays a ``$`` (FROM substitutes ARGs)."""
    return ref.replace("\\", "\\\\").replace("$", "\\$")


def _path(p: str) -> str:
    return p if re.fullmatch(r"[A-Za-z0-9_./+@%:,=-]+", p) else json.dumps(p)


def _copy(stage: str, src: str, dest: str) -> str:
    s, d = _path("/" + src), _path("/" + dest)
    if s.startswith('"') or d.startswith('"'):
        return f"COPY --from={stage} [{json.dumps('/' + src)}, {json.dumps('/' + dest)}]"
    return f"COPY --from={stage} {s} {d}"


def env_lines(sel: TritonSelection, facts: TritonFacts, arch: str) -> list[tuple[str, str]]:
    """compose.py's ENV lines before WORKDIR: (name, Dockerfile word)."""
    tarch, _ = _cuda_arch(arch)
    env: list[tuple[str, str]] = [
        ("PIP_BREAK_SYSTEM_PACKAGES", '"1"'),
        ("TRITON_SERVER_VERSION", _literal(facts.version)),
        ("NVIDIA_TRITON_SERVER_VERSION", _literal(facts.container_version)),
        ("PATH", '"/opt/tritonserver/bin:${PATH}"'),
        ("UCX_MEM_EVENTS", '"no"'),
    ]
    if "pytorch" in sel.backends:
        env.append(("LD_LIBRARY_PATH", '"/opt/hpcx/ucc/lib/:/opt/hpcx/ucx/lib/:${LD_LIBRARY_PATH}"'))
    env += [
        ("TF_ADJUST_HUE_FUSED", '"1"'), ("TF_ADJUST_SATURATION_FUSED", '"1"'),
        ("TF_ENABLE_WINOGRAD_NONFUSED", '"1"'), ("TF_AUTOTUNE_THRESHOLD", '"2"'),
        ("TRITON_SERVER_GPU_ENABLED", '"1"' if sel.enable_gpu else '"0"'),
        ("TRITON_SERVER_USER", '"triton-server"'),
        ("DEBIAN_FRONTEND", '"noninteractive"'),
        ("TCMALLOC_RELEASE_RATE", '"200"'),
    ]
    if sel.needs_gpu_min and "pytorch" in sel.backends:
        env.append(("LD_LIBRARY_PATH",
                    f'"/usr/local/cuda/targets/{tarch}-linux/lib:/usr/local/cuda/lib64/stubs:${{LD_LIBRARY_PATH}}"'))
    if "vllm" in sel.backends:
        env.append(("LD_LIBRARY_PATH",
                    '"/usr/local/lib:/usr/local/lib/python3.12/dist-packages/torch/lib:${LD_LIBRARY_PATH}"'))
    if "dali" in sel.backends:
        env.append(("PYTHONPATH", '"/opt/tritonserver/backends/dali/wheel/dali:$PYTHONPATH"'))
    return env


def render_dockerfile(sel: TritonSelection, facts: TritonFacts, images: dict[str, str], arch: str,
                      base: BaseChoice, found: Found, adds: Sequence[LocalAdd] = ()) -> str:
    """Dockerfile.compose: what ``ociassemble build`` (or, with the caveats its comments give,
    ``docker build``) turns into the very image compose publishes.

    It holds no RUN step the image did not get: compose.py's prepare block appears only
    when full's own layers holding NVIDIA's run of it are part of the result; a COPY only
    when its source is there. ``--add`` lines come last, as the seed's custom backend does.
    """
    out = [
        "#", "# Multistage build (written by ociassemble; equivalent to compose.py's).", "#",
        f"ARG TRITON_VERSION={_literal(facts.version)}",
        f"ARG TRITON_CONTAINER_VERSION={_literal(facts.container_version)}", "",
        f"FROM {_ref(images['full'])} AS full",
    ]
    if sel.needs_gpu_min:
        out += ["", f"FROM {_ref(images['gpu-min'])} AS min_container"]
    if base.kind == "full":
        out += [
            "",
            f"# min ({images['min']}) is not the image full was built on: it shares {base.shared} of its",
            f"# {base.min_layers} layers with full. This image stands on full's own layers below its first",
            "# /opt/tritonserver layer: the OS full was built on and what full's build installed with the",
            "# RUN steps below, as NVIDIA ran them (ociassemble runs nothing; `ociassemble build` reads",
            "# `FROM full` followed by them so). Docker cannot name that part of full;",
            "# `ociassemble compose --base min` keeps min as the base instead.",
            "FROM full", "",
        ]
    else:
        out += ["", f"FROM {_ref(images['min'])}", ""]
    out += [f"ENV {k}={v}" for k, v in env_lines(sel, facts, arch)]
    out.append('LABEL com.nvidia.tritonserver.version="${TRITON_SERVER_VERSION}"')
    if base.system == 0 and base.kind == "min":
        out += [
            "# compose.py's RUN steps (useradd triton-server; apt-get install of the server's libraries,",
            "# python3 for the python backend; pip install) are NOT in this image: ociassemble runs no RUN",
            f"# step, and {base.no_system_reason}. What they install is missing.",
        ]
    else:
        out += prepare_block(sel)
    out += [
        "", "WORKDIR /opt/tritonserver", "RUN rm -fr /opt/tritonserver/*",
        'ENV NVIDIA_PRODUCT_NAME="Triton Server"',
        f"ENV NVIDIA_BUILD_ID={_literal(facts.build_id)}",
        f"LABEL com.nvidia.build.id={_literal(facts.build_id)}",
        f"LABEL com.nvidia.build.ref={_literal(facts.build_ref)}", "",
    ]
    out += [_copy("full", f"{ROOT}/{item}", f"{ROOT}/{item}") for item in found.core]
    for kind, kdir in KINDS:
        for name in sel.names(kind):
            out.append(_copy("full", f"{ROOT}/{kdir}/{name}", f"{ROOT}/{kdir}/{name}"))
            out.append(f"RUN chown {TRITON_UID}:{TRITON_GID} /{ROOT}/{kdir}")
    if found.entrypoint:
        out.append(_copy("full", extras_dir(sel), extras_dir(sel)))
    if found.serve:
        out.append(_copy("full", "usr/bin/serve", "usr/bin/serve"))
    out += [_copy("min_container", c.src, c.dest) for c in found.cuda]
    if found.serve:
        out.append("LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true")
    if not sel.enable_gpu:
        out.append('ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]')
    out += [a.copy_line for a in adds]
    return "\n".join(out) + "\n"


def prepare_block(sel: TritonSelection) -> list[str]:
    """compose.py's RUN steps for the system dependencies (NVIDIA ran them in full's build)."""
    deps = " libgomp1" if ("onnxruntime" in sel.backends or "pytorch" in sel.backends) else ""
    out = [
        "RUN userdel tensorrt-server > /dev/null 2>&1 || true \\",
        "      && userdel ubuntu > /dev/null 2>&1 || true \\",
        "      && if ! id -u $TRITON_SERVER_USER > /dev/null 2>&1 ; then useradd $TRITON_SERVER_USER; fi",
        "RUN apt-get update \\",
        "      && apt-get install -y --no-install-recommends clang curl dirmngr git gperf libb64-0d \\",
        f"         libcurl4-openssl-dev libgoogle-perftools-dev libjemalloc-dev libnuma-dev wget{deps} python3-pip \\",
        "      && rm -rf /var/lib/apt/lists/*",
    ]
    if "python" in sel.backends:
        out += [
            "RUN apt-get update \\",
            "      && apt-get install -y --no-install-recommends python3 libarchive-dev python3-pip \\",
            "         python3-wheel python3-setuptools libpython3-dev \\",
            '      && pip3 install --upgrade "numpy<2" virtualenv \\',
            "      && rm -rf /var/lib/apt/lists/*",
        ]
    return out


@functools.cache
def prepare_texts() -> frozenset[str]:
    """compose.py's prepare RUN lines as the Dockerfile parser reads them (every variant
    :func:`prepare_block` writes): ``ociassemble build`` carries them out by carrying full's
    system layers, NVIDIA's own run of them."""
    variants = [TritonSelection(backends=b) for b in ([], ["python"], ["onnxruntime"], ["python", "onnxruntime"])]
    text = "FROM prepare\n" + "\n".join(line for sel in variants for line in prepare_block(sel)) + "\n"
    return frozenset(i.text for i in parse(text, "compose.py", {}).final.steps)


def is_prepare_run(text: str) -> bool:
    return text in prepare_texts()
