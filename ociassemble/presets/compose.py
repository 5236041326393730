"""``compose(ComposeOptions)``: compose.py's flags, carried out by the engine.

The Triton preset renders Dockerfile.compose from the flags and from what the images hold
(their configs, and the headers of full's own layers), and the Dockerfile builder
(:mod:`ociassemble.presets.build`) turns that very file into the engine's plan, so that
``compose --dry-run`` then ``build -f Dockerfile.compose`` publishes the same image.
Full's layers are read once: a draft of the file, written before anything is read, says
which trees to read and which bodies to keep; the final file is rendered from what the
read found and planned over the same read layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ociassemble.engine.assemble import build_tree, common_prefix, parse_created
from ociassemble.engine.run import Base, Result, RunOptions, Session, translating_os_errors
from ociassemble.errors import UsageError
from ociassemble.layers.localadd import Ignore, fingerprint, parse_adds
from ociassemble.layers.speculate import Speculation
from ociassemble.layers.tree import Tree
from ociassemble.presets.build import BASE, Layout, Reads, assemble, layout, read_stages, recipe
from ociassemble.presets.dockerfile import Dockerfile, parse
from ociassemble.presets.triton import (
    DRAFT,
    BaseChoice,
    TritonSelection,
    check_selection,
    found_in,
    image_refs,
    read_facts,
    render_dockerfile,
)
from ociassemble.transport.source import ResolvedImage

GPU_MIN_TREES = ["usr/local/cuda", "opt/hpcx", "usr/lib"]
DOCKERFILE = "Dockerfile.compose"
ROLE_OF_KEY = {"full": "full", BASE: "min", "min_container": "gpu-min"}  # Dockerfile.compose's stages


@dataclass
class ComposeOptions(RunOptions):
    backends: list[str] = field(default_factory=list)
    repoagents: list[str] = field(default_factory=list)
    caches: list[str] = field(default_factory=list)
    container_version: str | None = None
    images: list[str] = field(default_factory=list)
    enable_gpu: bool = True
    system_layers: str = "auto"
    base: str = "auto"  # "min": keep the named min as the base even when full was not built on it
    adds: list[str] = field(default_factory=list)  # SRC:DEST local content, a layer each (--add)
    add_chown: str | None = None  # UID[:GID] for the --add layers (default 0:0)


ComposeResult = Result


def compose(opts: ComposeOptions) -> Result:
    """Compose; every failure is an :class:`OciAssembleError`, those of the local file system
    (full, read-only, a file in the way) a :class:`LocalFileError` naming the place."""
    return translating_os_errors(lambda: _compose(opts), opts)


def _by_key(lay: Layout, images: dict[str, ResolvedImage]) -> dict[str, ResolvedImage]:
    return {k: images[ROLE_OF_KEY[k]] for k in lay.refs}


def _compose(opts: ComposeOptions) -> Result:
    sel = TritonSelection(list(opts.backends), list(opts.repoagents), list(opts.caches), opts.enable_gpu)
    if opts.system_layers not in ("auto", "none"):
        raise UsageError("--system-layers must be auto or none")
    if opts.base not in ("auto", "min"):
        raise UsageError("--base must be auto or min")
    refs = image_refs(opts.images, opts.container_version, opts.enable_gpu, sel)
    adds = parse_adds(list(opts.adds), opts.add_chown)
    with Session(opts) as s:
        sources = {role: s.source(refs[role]) for role in ("min", "full", "gpu-min")
                   if role in refs and (role != "gpu-min" or sel.needs_gpu_min)}
        key, tops = None, {}
        if not opts.dry_run:
            key, tops = s.memo_key({"compose": {
                "refs": refs, "backends": opts.backends, "repoagents": opts.repoagents, "caches": opts.caches,
                "gpu": opts.enable_gpu, "system_layers": opts.system_layers, "base": opts.base,
                "adds": fingerprint(adds)}}, sources)
            hit = s.recall(key, DOCKERFILE)
            if hit is not None:
                return hit
        images = {role: s.resolve(role, src) for role, src in sources.items()}
        if s.moved(tops, images):
            key = None  # a tag moved between the HEAD and the read: remember nothing
        mn, full = images["min"], images["full"]
        arch = full.config.platform.architecture
        if mn.config.platform.architecture != arch:
            raise UsageError(f"min image is {mn.config.platform} but full image is {full.config.platform}; "
                             "use images of one platform")
        facts = read_facts(mn.config, full.config, opts.enable_gpu, full.name, mn.name)
        shared = common_prefix(mn.config.diff_ids, full.config.diff_ids)
        min_is_base = shared == len(mn.config.diff_ids)
        notes: list[str] = []
        kind = "min"
        if not min_is_base:
            s.log(f"min and full share {shared} of min's {len(mn.config.diff_ids)} layers: min is not full's base")
            if opts.system_layers == "auto" and opts.base == "auto":
                kind = "full"
                notes.append(f"min shares {shared} of its {len(mn.config.diff_ids)} layers with full, so it is not "
                             "full's base and is not used (--base min keeps it)")
            else:
                notes.append(f"warning: min shares {shared} of its {len(mn.config.diff_ids)} layers with full: it is "
                             "not full's base, so nothing full's build installed (python3, libraries, the "
                             "triton-server user) is carried; the server may not start (--base auto stands the image "
                             "on full's own base)")
        prepare = opts.system_layers == "auto" and (kind == "full" or min_is_base)

        def choice(system: int) -> BaseChoice:
            if system or kind == "full":
                reason = ""
            elif opts.system_layers == "none":
                reason = "--system-layers none was given"
            elif not min_is_base:
                reason = ("min is not the image full was built on, so full's build of them cannot be carried "
                          "(--base auto stands the image on full's own base instead)")
            else:
                reason = "full has no layer between min's and its first /opt/tritonserver layer"
            return BaseChoice(kind, system, shared, len(mn.config.diff_ids), reason)

        # the draft: every copy that may be there, so the read keeps every body the real file can copy
        draft = parse(render_dockerfile(sel, facts, refs, arch, choice(1 if prepare else 0), DRAFT, adds), DOCKERFILE,
                      {})
        lay = layout(draft)
        used = [full, *([mn] if kind == "min" else []), *([images["gpu-min"]] if sel.needs_gpu_min else [])]
        created = s.sde if s.sde is not None else max(parse_created(i.config.data.get("created")) for i in used)
        speculation = None
        if not opts.dry_run:
            s.check_destination()
            if s.spec.kind == "gzip":
                speculation = Speculation(_draft_specs(draft, lay, _by_key(lay, images)), created, s.sde, s.spool)
        reads = read_stages(s, draft, lay, _by_key(lay, images), bodies=not opts.dry_run, speculation=speculation,
                            lenient=True)
        check_selection(reads.trees["full"], sel, full.name)
        gpu_tree = None
        if sel.needs_gpu_min:
            gm = images["gpu-min"]
            tops_ = tuple(GPU_MIN_TREES)
            read = s.scan(gm, list(range(len(gm.manifest.layers))),
                          (lambda p: p.startswith(tops_)) if not opts.dry_run else (lambda _p: False))
            gpu_tree = build_tree(read, complete=True)
        found = found_in(sel, reads.trees["full"], gpu_tree, arch, images["gpu-min"].name if gpu_tree else "")
        text = render_dockerfile(sel, facts, refs, arch, choice(len(reads.system)), found, adds)
        s.work.mkdir(parents=True, exist_ok=True)
        dockerfile = s.work / DOCKERFILE
        dockerfile.write_text(text)
        final = parse(text, DOCKERFILE, {})
        lay = layout(final)
        if opts.dry_run:
            return _dry_run(s, final, lay, _by_key(lay, images), reads, notes, dockerfile)
        # its destinations are compose.py's own paths (and --add's under /opt/tritonserver): the
        # base's tree is not read to place them
        plan = assemble(s, final, lay, _by_key(lay, images), None, Ignore(), memo=key, speculation=speculation,
                        dockerfile=text, notes=notes, trusted=True)
        return s.publish(plan, DOCKERFILE)


def _draft_specs(df: Dockerfile, lay: Layout, images: dict[str, ResolvedImage]) -> list:  # type: ignore[type-arg]
    """The layers the draft describes, known before any layer is read (for the speculation)."""
    empty = Reads(Base(images[lay.base], [], [], None), {k: Tree() for k in lay.refs}, {}, {}, [], None, [])
    rec, _, _ = recipe(df, lay, images, empty, None, Ignore())
    return rec.layers


def _dry_run(s: Session, df: Dockerfile, lay: Layout, images: dict[str, ResolvedImage], reads: Reads,
             notes: list[str], dockerfile: Path) -> Result:
    """Nothing is written but Dockerfile.compose, and no file body was kept: full's layers
    (and gpu-min's) were read for their headers only (or taken from the store's index), so
    that the split, the names checked and the file are those of the real run."""
    reads = read_stages(s, df, lay, images, bodies=False)
    rec, _, _ = recipe(df, lay, images, reads, None, Ignore())
    lines = [*reads.lines, *notes]
    lines += [f"new layer '{spec.name}': " + ", ".join(f"/{c.src}" for c in spec.copies) for spec in rec.layers]
    lines.append(f"dry run: layer headers read, no file body kept, nothing written but {DOCKERFILE}")
    lines.append(f"would write: {s.output}")
    return Result(str(s.output), "", "", "", [], dockerfile, lines, {}, dry_run=True)


__all__ = ["ComposeOptions", "ComposeResult", "compose"]
