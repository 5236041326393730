"""``ociassemble build``: a Dockerfile carried out without a daemon, on the engine.

The last stage is the image built. It stands on the image its ``FROM`` names (never read:
its layers are carried as they are), copies trees from image stages (``FROM REF AS NAME``)
and from the build context, and changes the config. ``RUN`` needs a container, so only the
lines compose.py writes itself are accepted: its prepare block is carried out by carrying
the full image's own layers that ran it (NVIDIA's build of those very steps),
``rm -fr DIR/*`` becomes an opaque marker in the next layer, and ``chown U:G DIR`` the
owner of a directory the COPY before it writes. The Triton preset (``compose``) renders
Dockerfile.compose and runs it through this same code, so ``compose --dry-run`` then
``build -f Dockerfile.compose`` publishes the very image ``compose`` does.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import sys
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ociassemble.engine.assemble import (
    ScannedLayer,
    build_tree,
    common_prefix,
    history_below,
    parse_created,
    prefix_filter,
)
from ociassemble.engine.recipe import ConfigChanges, Recipe, Step, env_dict
from ociassemble.engine.run import Base, Plan, Result, RunOptions, Session, translating_os_errors
from ociassemble.errors import SelectionError, UsageError
from ociassemble.layers.localadd import Ignore, fingerprint, local_tree
from ociassemble.layers.spec import LayerSpec, LocalAdd, OwnedDir, TreeCopy
from ociassemble.layers.speculate import Speculation
from ociassemble.layers.tree import Tree, at_or_under, resolve
from ociassemble.oci import model
from ociassemble.oci.changeset import DIR, SYMLINK
from ociassemble.oci.reference import parse_output
from ociassemble.presets.dockerfile import (
    Dockerfile,
    DockerfileError,
    Instruction,
    command,
    copy_paths,
    expand,
    mode,
    owner,
    pairs,
    parse,
    platform_args,
)
from ociassemble.presets.triton import ROOT, component, is_prepare_run, no_triton_root
from ociassemble.text import printable
from ociassemble.transport.source import ResolvedImage
from ociassemble.transport.table import local_path

_RM = re.compile(r"RUN rm -(?:fr|rf) (/[^\s*?\[]+)/\*")
_CHOWN = re.compile(r"RUN chown ([0-9]+):([0-9]+) (/[^\s*?\[]+)")
_PORT = re.compile(r"[0-9]+(?:-[0-9]+)?/(?:tcp|udp|sctp)")


@dataclass
class BuildOptions(RunOptions):
    dockerfile: str | None = None  # default: CONTEXT/Dockerfile
    context: str = "."
    build_args: list[str] = field(default_factory=list)  # KEY=VALUE


def build(opts: BuildOptions) -> Result:
    """Build the Dockerfile's last stage; every failure an :class:`OciAssembleError`."""
    return translating_os_errors(lambda: _build(opts), opts)


def parse_build_args(items: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:  # --build-arg NAME takes it from the environment, as docker does (unset: not given)
            if name not in os.environ:
                continue
            value = os.environ[name]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--build-arg {printable(item)} must be NAME=VALUE")
        args[name] = value
    return args


def _build(opts: BuildOptions) -> Result:
    if opts.dry_run:
        raise UsageError("build has no dry run; `compose --dry-run` writes a Dockerfile to build")
    context = Path(opts.context)
    if not context.is_dir():
        raise UsageError(f"build context {printable(opts.context)} is not a directory")
    text, path = _read_dockerfile(opts.dockerfile, context)
    args = parse_build_args(opts.build_args)
    df = parse(text, path, args, platform_args(opts.platform))
    if opts.work_dir == RunOptions.work_dir:  # scratch space never inside the context (COPY . would take it)
        opts = dataclasses.replace(opts, work_dir=tempfile.gettempdir())
    ignore = _without_our_files(Ignore.read(context), context, opts)
    with Session(opts) as s:
        lay = layout(df)
        sources = {key: s.source(ref) for key, ref in lay.refs.items()}
        key, tops = None, {}
        if s.store is not None:
            whole = LocalAdd("context", str(context), "context", context=str(context), ignore=ignore.lines)
            key, tops = s.memo_key({"build": {"dockerfile": text, "args": args, "refs": lay.refs,
                                              "context": fingerprint([whole])}}, sources)
            hit = s.recall(key, "")
            if hit is not None:
                return hit
        images = {k: s.resolve(k, src) for k, src in sources.items()}
        if s.moved(tops, images):
            key = None  # a tag moved between the HEAD and the read: remember nothing
        for k in (lay.base,):
            if (images[k].config.data.get("config") or {}).get("OnBuild"):
                raise DockerfileError(f"{printable(path)}:{df.final.line}: the base image {printable(images[k].name)} "
                                      "has ONBUILD triggers, which ociassemble build cannot run")
        s.check_destination()
        plan = assemble(s, df, lay, images, context, ignore, memo=key, notes=df.warnings)
        result = s.publish(plan)
        if opts.push_index:
            result.plan_lines += s.push_indexes(list(plan.images.values()))
        return result


def _read_dockerfile(name: str | None, context: Path) -> tuple[str, str]:
    if name == "-":
        return sys.stdin.read(), "Dockerfile (stdin)"
    path = Path(name) if name else context / "Dockerfile"
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise UsageError(f"cannot read the Dockerfile {printable(str(path))}: {reason}; pass -f FILE") from None


def _without_our_files(ignore: Ignore, context: Path, opts: BuildOptions) -> Ignore:
    """The context as the user's: scratch folders of the work directory and an output
    layout that lie inside it are not part of it (they change from run to run)."""
    extra: list[str] = []
    root = os.path.realpath(context)
    out = local_path(parse_output(opts.output_name))
    for place, pattern in ((Path(opts.work_dir), "ociassemble-*"), (out, "")):
        if place is None:
            continue
        real = os.path.realpath(place)
        if real == root or real.startswith(root + os.sep):
            rel = os.path.relpath(real, root).replace(os.sep, "/")
            extra.append("/".join(p for p in (rel if rel != "." else "", pattern) if p) or ".")
    return Ignore.parse((*ignore.lines, *extra)) if extra else ignore


# -- which images the last stage uses -----------------------------------------------------------------

@dataclass
class Layout:
    """The images the last stage uses, by key (a stage's name, ``base`` for an unnamed FROM
    image, or the reference a ``COPY --from`` names directly)."""

    refs: dict[str, str]
    base: str  # key of the image the last stage stands on
    copy_from: dict[int, str]  # COPY line -> key of its image


BASE = "base image"  # the key of an unnamed FROM image of the last stage (no stage name has a space)


def layout(df: Dockerfile) -> Layout:
    """Which image each name of the last stage means. ``FROM NAME`` and ``COPY --from=NAME``
    name an earlier stage (by name or index; a stage built FROM another is that image), else
    an image reference; keys are stage names, ``stage #N`` for unnamed stages, ``image REF``
    for references named only by ``--from``, and :data:`BASE`."""
    final = df.final
    refs: dict[str, str] = {}
    named = [s.name for s in df.stages[:-1] if s.name]

    def stage_before(name: str, upto: int) -> int | None:
        hits = [k for k, s in enumerate(df.stages[:upto]) if s.name == name.lower()]
        return hits[-1] if hits else None

    def key_of(k: int) -> str:
        while (inner := stage_before(df.stages[k].base, k)) is not None:
            k = inner  # FROM an earlier stage: the same image
        s = df.stages[k]
        key = s.name or f"stage #{k}"
        refs.setdefault(key, s.base)
        return key

    def image_key(name: str, line: int) -> str:
        last = len(df.stages) - 1
        if not name:
            raise DockerfileError(f"{printable(df.path)}:{line}: COPY --from= names nothing")
        if name.isdigit():
            if int(name) >= last:
                raise DockerfileError(f"{printable(df.path)}:{line}: COPY --from={name} names no earlier stage")
            return key_of(int(name))
        k = stage_before(name, last)
        if k is not None:
            return key_of(k)
        if not any(ch in name for ch in "/:.@"):
            # a bare word is a stage name to everyone but Docker Hub: a typo must not become a pull
            raise DockerfileError(f"{printable(df.path)}:{line}: COPY --from={printable(name)} names no stage "
                                  f"(stages: {', '.join(printable(n) for n in named) or 'none'}); to copy from an "
                                  "image, give its full reference (docker.io/library/NAME:TAG)")
        refs.setdefault(f"image {name}", name)
        return f"image {name}"

    base_stage = stage_before(final.base, len(df.stages) - 1)
    if base_stage is not None:
        base = key_of(base_stage)
    else:
        base = BASE
        refs[BASE] = final.base
    args = {k: v for k, v in final.args.items() if v is not None}
    copy_from = {ins.line: image_key(expand(ins.flags["from"], args, ins.where(df.path)), ins.line)
                 for ins in final.steps if ins.cmd == "COPY" and "from" in ins.flags}
    return Layout(refs, base, copy_from)


# -- reading --------------------------------------------------------------------------------------------

@dataclass
class Reads:
    """What was read of the images, and what the result stands on."""

    base: Base
    trees: dict[str, Tree]
    scanned: dict[str, list[ScannedLayer]]
    lower: dict[str, list[int]]
    lines: list[str]
    triton: str | None  # the key of the image /opt/tritonserver is copied from
    system: list[int]  # its layers carried below the new ones (compose.py's prepare block)
    base_tree: Tree | None = None  # the base's merged tree (headers), when destinations need it


def _copy_sources(df: Dockerfile, lay: Layout) -> dict[str, list[str]]:
    """Every image's COPY sources as written (words processed with the stage's ARGs only:
    enough to know which trees' bodies to keep; the recipe is evaluated later)."""
    args = {k: v for k, v in df.final.args.items() if v is not None}
    out: dict[str, list[str]] = {}
    for ins in df.final.steps:
        if ins.cmd == "COPY" and ins.line in lay.copy_from:
            srcs = list(ins.args[:-1]) if ins.json else [expand(a, args, ins.where(df.path)) for a in ins.args[:-1]]
            out.setdefault(lay.copy_from[ins.line], []).extend(s.strip("/") for s in srcs)
    return out


def read_stages(s: Session, df: Dockerfile, lay: Layout, images: dict[str, ResolvedImage], bodies: bool = True,
                speculation: Speculation | None = None, lenient: bool = False) -> Reads:
    """Decide what the result stands on and read the layers the copies come from.

    Layers the result carries are never read. An image copied from is read above the
    layers it shares with the base; with compose.py's prepare block, the Triton image's
    layers up to its first /opt/tritonserver layer are its system layers (NVIDIA's run of
    that block), carried below the new layers, and its tree starts there.
    """
    final = df.final
    prepare = [ins for ins in final.steps if ins.cmd == "RUN" and is_prepare_run(ins.text)]
    sources = _copy_sources(df, lay)
    triton = next((k for k, srcs in sources.items() if any(at_or_under(p, ROOT) for p in srcs)), None)
    if prepare and triton is None:
        raise DockerfileError(f"{prepare[0].where(df.path)}: compose.py's prepare step is carried out by carrying the "
                              "layers of the image /opt/tritonserver is copied from, and no COPY --from copies it; "
                              "this RUN needs a container runtime")

    def want(key: str) -> Any:
        return prefix_filter(sources.get(key, [])) if bodies else (lambda _p: False)

    b = images[lay.base]
    # published layer indexes: then only what the copies need is read (and of the base, only
    # what the library check looks up)
    for key in dict.fromkeys([*sources, lay.base]):
        s.discover_indexes(images[key])
    trees: dict[str, Tree] = {}
    scanned: dict[str, list[ScannedLayer]] = {}
    lower: dict[str, list[int]] = {}
    lines = [f"{k}: {img.name} {img.digest}" for k, img in images.items()]
    system: list[int] = []
    annotations = {model.ANNOTATION_BASE_NAME: lay.refs[lay.base], model.ANNOTATION_BASE_DIGEST: b.digest}
    if prepare and triton is not None:
        f = images[triton]
        shared = 0 if lay.base == triton else common_prefix(b.config.diff_ids, f.config.diff_ids)
        if lay.base != triton and shared < len(b.config.diff_ids):
            raise DockerfileError(
                f"{prepare[0].where(df.path)}: compose.py's prepare step is carried out by carrying the layers of "
                f"{printable(f.name)} that ran it, but {printable(b.name)} is not the image it was built on (they "
                f"share {shared} of its {len(b.config.diff_ids)} layers); build FROM {triton}, or remove these RUN "
                "lines")
        read = s.scan(f, list(range(shared, len(f.manifest.layers))), want(triton), speculation)
        first = next((k for k, sl in enumerate(read) if sl.touches(ROOT)), None)
        if first is None:
            raise no_triton_root(f.name)
        system = [sl.index for sl in read[:first]]
        if not system and lay.base != triton and not lenient:
            raise DockerfileError(
                f"{prepare[0].where(df.path)}: {printable(f.name)} has no layer between {printable(b.name)}'s and its "
                "first /opt/tritonserver layer, so nothing ran this step; remove these RUN lines")
        scanned[triton] = read[first:]
        lower[triton] = list(range(read[first].index))
        trees[triton] = build_tree(read[first:])
        f_hist = f.config.layer_history()
        if lay.base == triton:
            base = Base(f, [(f.manifest.layers[i], f) for i in system], [f.config.diff_ids[i] for i in system],
                        history_below(list(f.config.data.get("history") or []), len(system))
                        if _aligned(f) else None)
            lines.append(f"base: {triton}'s layers below its first /{ROOT} layer (the OS it was built on and what its "
                         "build installed)")
        else:
            history = None
            if _aligned(b):
                history = list(b.config.data.get("history") or [])
                history += [dict(f_hist[i]) if i < len(f_hist) and f_hist[i] else
                            {"created": f.config.data.get("created", ""), "created_by": f"layer {i} of {triton}"}
                            for i in system]
            base = Base(b, [(d, b) for d in b.manifest.layers] + [(f.manifest.layers[i], f) for i in system],
                        [*b.config.diff_ids, *(f.config.diff_ids[i] for i in system)], history, annotations)
    else:
        base = Base(b, [(d, b) for d in b.manifest.layers], list(b.config.diff_ids),
                    list(b.config.data.get("history") or []) if _aligned(b) else None, annotations)
    if lay.base != triton or not prepare:
        lines.append(f"reused from {lay.base}: {len(b.manifest.layers)} layers (not read)")
    for key in sources:
        if key in trees:
            continue
        img = images[key]
        start = common_prefix(base.diff_ids, img.config.diff_ids)
        read = s.scan(img, list(range(start, len(img.manifest.layers))), want(key),
                      speculation if key == triton else None)
        scanned[key] = read
        lower[key] = list(range(start))
        trees[key] = build_tree(read, complete=start == 0)
        if start:
            lines.append(f"{key} layers shared with the base: {start} (not read)")
    if triton is not None and (prepare or triton == "full"):
        lines.append(f"system layers carried from {triton}: {len(system)} {system}")
    for key, read in scanned.items():
        lines.append(f"{key} layers read: {len(read) + (len(system) if key == triton else 0)} "
                     f"{sorted([*system, *(sl.index for sl in read)]) if key == triton else [sl.index for sl in read]}")
    return Reads(base, trees, scanned, lower, lines, triton, system)


def _aligned(img: ResolvedImage) -> bool:
    hist = img.config.layer_history()
    return bool(hist) and all(h is not None for h in hist)


def read_below(s: Session, key: str, img: ResolvedImage, reads: Reads) -> None:
    """Read the headers of the layers below an image's tree too (a copy needs them: a
    source missing above them, or a symlink leading down); their bodies are fetched by
    the targeted read that fills missing bodies."""
    below = reads.lower.get(key, [])
    if not below:
        return
    s.log(f"a COPY --from={key} source lies below the layers read: reading the headers of {len(below)} more")
    more = s.scan(img, below, lambda _p: False)
    reads.scanned[key] = sorted([*more, *reads.scanned[key]], key=lambda sl: sl.index)
    reads.trees[key] = build_tree(reads.scanned[key], complete=True)
    reads.lower[key] = []


# -- the last stage as a recipe ------------------------------------------------------------------------------

def _leads_below(tree: Tree, path: str) -> bool:
    """A source that the tree cannot follow to its end: missing, or reached through a
    symlink whose target is not in the layers read."""
    if resolve(tree, path) is not None:
        return False
    return not tree.complete


def recipe(df: Dockerfile, lay: Layout, images: dict[str, ResolvedImage], reads: Reads, local_root: Path | None,
           ignore: Ignore) -> tuple[Recipe, list[LocalAdd], list[tuple[str, str, Instruction]]]:
    """The last stage's instructions as the engine's steps. Returns the recipe, the local
    content it copies, and the image sources a copy could not find (key, path, line)."""
    where_file = df.path
    base_cfg = reads.base.image.config
    env = env_dict(base_cfg.env)
    args: dict[str, str] = {}
    workdir = str((base_cfg.data.get("config") or {}).get("WorkingDir") or "/")
    config = ConfigChanges()
    steps: list[Step] = []
    adds: list[LocalAdd] = []
    missing: list[tuple[str, str, Instruction]] = []
    pending: tuple[str, Instruction] | None = None
    last: LayerSpec | None = None
    names: Counter[str] = Counter()
    for ins in df.final.steps:
        where = ins.where(where_file)
        words = {**args, **env}
        if ins.cmd == "ARG":
            for item in ins.args:
                name = item.partition("=")[0]
                value = df.final.args.get(name)
                if value is not None:
                    args[name] = value
            continue
        if ins.cmd == "ENV":
            for k, v in pairs(ins, words, where_file):
                env[k] = v
                words[k] = v
                config.env.append((k, v))
        elif ins.cmd == "LABEL":
            config.labels.update(pairs(ins, words, where_file))
        elif ins.cmd == "WORKDIR":
            if len(ins.args) != 1:
                raise DockerfileError(f"{where} takes one path")
            workdir = posixpath.normpath(posixpath.join(workdir, expand(ins.args[0], words, where)))
            config.workdir = workdir
        elif ins.cmd == "USER":
            if len(ins.args) != 1:
                raise DockerfileError(f"{where} takes one user")
            config.user = expand(ins.args[0], words, where)
        elif ins.cmd == "ENTRYPOINT":
            config.entrypoint = command(ins)
        elif ins.cmd == "CMD":
            config.cmd = command(ins)
        elif ins.cmd == "EXPOSE":
            for w in ins.args:
                port = expand(w, words, where).lower()
                port = port if "/" in port else f"{port}/tcp"
                if not _PORT.fullmatch(port):
                    raise DockerfileError(f"{where}: {printable(port)} is not a port (NUMBER[-NUMBER][/tcp|udp|sctp])")
                number, _, proto = port.partition("/")
                low, _, high = number.partition("-")
                if int(high or low) - int(low) > 65535 or int(high or low) > 65535 or int(high or low) < int(low):
                    raise DockerfileError(f"{where}: {printable(port)} is not a port range")
                config.exposed += [f"{n}/{proto}" for n in range(int(low), int(high or low) + 1)]
        elif ins.cmd == "RUN":
            if is_prepare_run(ins.text):
                continue  # carried out by the system layers read_stages put below the new ones
            if m := _RM.fullmatch(ins.text):
                if pending is not None:
                    raise DockerfileError(f"{pending[1].where(where_file)}: no COPY follows this RUN rm before "
                                          "the next one")
                pending = (posixpath.normpath(m.group(1)).strip("/"), ins)
            elif m := _CHOWN.fullmatch(ins.text):
                path = posixpath.normpath(m.group(3)).strip("/")
                if last is None or not any(at_or_under(c.dest, path) for c in last.copies):
                    raise DockerfileError(f"{where}: ociassemble carries out RUN chown only for a directory the COPY "
                                          "right before it writes; this one needs a container runtime")
                last.dirs.append(OwnedDir(path, int(m.group(1)), int(m.group(2))))
            else:
                raise DockerfileError(f"{where} {printable(ins.text[4:64])}{'...' if len(ins.text) > 64 else ''} "
                                      "needs a container runtime; ociassemble build runs no command (it carries out "
                                      "only the RUN lines compose.py writes)")
        elif ins.cmd in ("COPY", "ADD"):
            spec = _layer(ins, df, lay, images, reads, local_root, ignore, words, workdir, adds, missing)
            if pending is not None:
                spec.opaque = [pending[0]]
                spec.dirs.insert(0, OwnedDir(pending[0]))
                pending = None
            names[spec.name] += 1
            if names[spec.name] > 1:
                spec.name = f"{spec.name} #{names[spec.name]}"
            steps.append(Step(ins.text, spec))
            last = spec
            continue
        steps.append(Step(ins.text))
    if pending is not None:
        raise DockerfileError(f"{pending[1].where(where_file)}: ociassemble carries out RUN rm -fr DIR/* as an "
                              "opaque marker in the next COPY layer, and none follows; it needs a container runtime")
    return Recipe(steps, config), adds, missing


def _place(base: Tree | None, dest: str, into: bool, src_dir: bool, name: str) -> str:
    """Where a copy lands, as Docker decides it against the image it copies into: symlinks
    on the way to the destination (and a destination that is a symlink to a directory) are
    followed, and a file copied onto an existing directory goes into it. Without the base's
    tree (compose's own lines, whose destinations are its own) the path is taken as written."""
    real, is_dir = dest, False
    if base is not None:
        parts = dest.split("/") if dest else []
        for k in range(len(parts), -1, -1):
            head = "/".join(parts[:k])
            found = resolve(base, head) if head else ""
            if found is not None:
                real = "/".join(p for p in (found, *parts[k:]) if p)
                break
        node = base.get(real)
        is_dir = node is not None and node.kind == DIR
    if (into or is_dir) and not src_dir and name:
        return posixpath.join(real, name) if real else name
    return real


def _needs_base_tree(df: Dockerfile) -> bool:
    """Whether a COPY/ADD destination could be decided by what the base holds there: any
    but those under a directory an earlier ``RUN rm -fr DIR/*`` emptied (compose's
    /opt/tritonserver, the seed's custom backend)."""
    emptied: list[str] = []
    for ins in df.final.steps:
        if ins.cmd == "RUN" and (m := _RM.fullmatch(ins.text)):
            emptied.append(posixpath.normpath(m.group(1)).strip("/"))
        elif ins.cmd in ("COPY", "ADD") and ins.args:
            dest = ins.args[-1]
            if "$" in dest or not dest.startswith("/"):
                return True
            if not any(at_or_under(posixpath.normpath(dest).strip("/"), e) and posixpath.normpath(dest).strip("/") != e
                       for e in emptied):
                return True
    return False


def base_tree(s: Session, base: Base) -> Tree:
    """The merged tree of the layers the result stands on, from their headers (the store's
    index when it has them)."""
    layers: list[ScannedLayer] = []
    for desc, img in base.layers:
        i = next(k for k, d in enumerate(img.manifest.layers) if d.digest == desc.digest)
        layers += s.scan(img, [i], lambda _p: False)
    return build_tree(layers, complete=True)


def _is_tar(path: Path) -> bool:
    if path.name.endswith((".tar.zst", ".tar.zstd")):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _layer(ins: Instruction, df: Dockerfile, lay: Layout, images: dict[str, ResolvedImage], reads: Reads,
           local_root: Path | None, ignore: Ignore, words: dict[str, str], workdir: str, adds: list[LocalAdd],
           missing: list[tuple[str, str, Instruction]]) -> LayerSpec:
    where = ins.where(df.path)
    srcs, dest, into = copy_paths(ins, words, workdir, df.path)
    own = owner(ins, df.path, words)
    chmod = mode(ins, df.path, words)
    for src in srcs:
        if any(ch in src for ch in "*?["):
            raise DockerfileError(f"{where}: wildcards in sources ({printable(src)}) are not supported; name each "
                                  "file or directory")
    dest = dest.strip("/")
    copies: list[TreeCopy] = []
    if ins.line in lay.copy_from:
        key = lay.copy_from[ins.line]
        tree = reads.trees[key]
        for src in srcs:
            path = posixpath.normpath("/" + src).strip("/")
            real = resolve(tree, path)
            node = tree.get(real) if real is not None else None
            if node is None:
                missing.append((key, path, ins))
            src_dir = node is None or node.kind == DIR
            to = _place(reads.base_tree, dest, into, src_dir, path.rsplit("/", 1)[-1] if path else "")
            copies.append(TreeCopy(path, to, image=key, owner=own, mode=chmod))
        names = [component(c.dest) for c in copies]
        kind_named = len(set(names)) == 1 and names[0] and names[0] != "triton core"
        name = names[0] if kind_named else "/" + dest
        return LayerSpec(name, copies, component=names[0] if len(set(names)) == 1 else "")
    for src in srcs:
        if re.match(r"[a-z]+://", src):
            raise DockerfileError(f"{where}: {printable(src)} is a URL; ociassemble reads no network beyond the "
                                  "registries: download it into the build context and COPY it")
        if local_root is not None:
            root = os.path.realpath(local_root)
            rel = posixpath.normpath(src.lstrip("/")) if src.strip("/") else "."
            if rel.startswith("../") or rel == "..":
                raise DockerfileError(f"{where}: {printable(src)} lies outside the build context")
            if rel != "." and ignore.excluded(rel):
                raise DockerfileError(f"{where}: {printable(src)} is excluded by the context's .dockerignore")
            if not os.path.lexists(os.path.join(root, rel)):
                raise DockerfileError(f"{where}: {printable(src)} is not in the build context "
                                      f"{printable(str(local_root))}")
            real = os.path.realpath(os.path.join(root, rel))  # every symlink on the way, followed
            if real != root and not real.startswith(root + os.sep):
                raise DockerfileError(f"{where}: {printable(src)} leads outside the build context (through a "
                                      "symlink); a build reads only its context")
            inner = os.path.relpath(real, root).replace(os.sep, "/")
            if inner != "." and ignore.excluded(inner):
                raise DockerfileError(f"{where}: {printable(src)} is excluded by the context's .dockerignore")
            p = Path(real)
        else:
            p = Path(src)
            if not os.path.lexists(p):
                raise DockerfileError(f"{where}: {printable(src)} does not exist")
        extract = ins.cmd == "ADD" and p.is_file() and _is_tar(p)
        to = _place(reads.base_tree, dest, into, p.is_dir() or extract, p.name)
        uid, gid = own or (0, 0)
        add = LocalAdd(f"context{len(adds)}", str(p), to, uid, gid, chown=own is not None, extract=extract,
                       context=str(local_root) if local_root is not None else "",
                       ignore=ignore.lines if local_root is not None else ())
        adds.append(add)
        copies.append(TreeCopy(to, to, image=add.key, mode=chmod))
    return LayerSpec(f"add /{dest}", copies, component=component(dest))


def assemble(s: Session, df: Dockerfile, lay: Layout, images: dict[str, ResolvedImage], context: Path | None,
             ignore: Ignore, memo: str | None = None, speculation: Speculation | None = None,
             lenient: bool = False, dockerfile: str = "", notes: list[str] | None = None,
             trusted: bool = False) -> Plan:
    """Read what the last stage needs and turn it into the engine's plan. ``context``: the
    build context COPY sources lie in (None: paths as given, relative to this directory)."""
    reads = read_stages(s, df, lay, images, speculation=speculation, lenient=lenient)
    if not trusted and _needs_base_tree(df):
        reads.base_tree = base_tree(s, reads.base)
    rec, adds, missing = recipe(df, lay, images, reads, context, ignore)
    again = sorted({key for key, path, _ in missing if _leads_below(reads.trees[key], path)} |
                   {c.image for spec in rec.layers for c in spec.copies
                    if c.image in reads.trees and _through_symlink_below(reads.trees[c.image], c.src)})
    if again:
        for key in again:
            read_below(s, key, images[key], reads)
        rec, adds, missing = recipe(df, lay, images, reads, context, ignore)
    if missing:
        key, path, ins = missing[0]
        raise SelectionError(f"{ins.where(df.path)}: the {key} image {printable(images[key].name)} has no "
                             f"/{printable(path)}")
    created = created_at(s, [images[lay.base], *(images[k] for k in reads.trees)])
    trees = dict(reads.trees)
    for a in adds:
        trees[a.key] = local_tree(a, created, s.spool)
    names = {k: img.name for k, img in images.items()} | {a.key: a.src for a in adds}
    lines = describe(reads, rec, notes or [])
    return Plan(
        base=reads.base, recipe=rec, trees=trees, images={k: images[k] for k in reads.trees},
        scanned=reads.scanned, lower=reads.lower,
        candidates=[sl for read in reads.scanned.values() for sl in read],
        names=names, created=created, dockerfile=dockerfile, plan_lines=lines, memo=memo, speculation=speculation,
    )


def created_at(s: Session, used: list[ResolvedImage]) -> int:
    """The result's ``created``: SOURCE_DATE_EPOCH, else the newest of the images it is made of."""
    return s.sde if s.sde is not None else max(parse_created(img.config.data.get("created")) for img in used)


def describe(reads: Reads, rec: Recipe, notes: list[str]) -> list[str]:
    """The plan as printed: what was read, then a line per new layer."""
    return [*reads.lines, *notes,
            *(f"new layer '{spec.name}': " + ", ".join(f"/{c.src}" for c in spec.copies) for spec in rec.layers)]


def _through_symlink_below(tree: Tree, path: str) -> bool:
    """A source reached through a symlink whose target the partial tree does not hold."""
    if tree.complete or resolve(tree, path) is not None:
        return False
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        node = tree.get("/".join(parts[:k]))
        if node is None:
            return False
        if node.kind == SYMLINK:
            return True
    return False


__all__ = ["BuildOptions", "build"]
