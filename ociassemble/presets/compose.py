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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ociassemble.engine.assemble import build_tree, common_prefix
from ociassemble.engine.libcheck import LibReport, remember_report
from ociassemble.engine.run import Base, Result, RunOptions, Session, translating_os_errors
from ociassemble.errors import SelectionError, UsageError
from ociassemble.layers.localadd import Ignore, fingerprint, parse_adds
from ociassemble.layers.spec import LocalAdd
from ociassemble.layers.speculate import Speculation
from ociassemble.layers.tree import Tree
from ociassemble.oci import model
from ociassemble.oci.digest import sha256_digest
from ociassemble.oci.model import Index, Platform, canonical_json
from ociassemble.presets.build import (
    BASE,
    Layout,
    Reads,
    assemble,
    created_at,
    describe,
    layout,
    read_stages,
    recipe,
)
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
from ociassemble.text import printable
from ociassemble.transport.memo import remember
from ociassemble.transport.source import ResolvedImage, Source
from ociassemble.transport.table import accepts_index

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
    many = platform_list(opts.platform)
    with Session(opts) as s:
        sources = {role: s.source(refs[role]) for role in ("min", "full", "gpu-min")
                   if role in refs and (role != "gpu-min" or sel.needs_gpu_min)}
        key, tops = None, {}
        if not opts.dry_run and s.store is not None:
            key, tops = s.memo_key({"compose": {
                "refs": refs, "backends": opts.backends, "repoagents": opts.repoagents, "caches": opts.caches,
                "gpu": opts.enable_gpu, "system_layers": opts.system_layers, "base": opts.base,
                "adds": fingerprint(adds), "platforms": many}}, sources)
            hit = s.recall(key, DOCKERFILE)
            if hit is not None:
                return hit
        if many is None:
            images = {role: s.resolve(role, src) for role, src in sources.items()}
            if s.moved(tops, images):
                key = None  # a tag moved between the HEAD and the read: remember nothing
            return _one(s, opts, sel, refs, adds, images, key, DOCKERFILE, True)
        return _index(s, opts, sel, refs, adds, sources, many, key, tops)


def platform_list(value: str | None) -> list[str] | None:
    """``--platform all`` or ``P1,P2``: the platforms of an index (None: one image)."""
    if value is None or ("," not in value and value != "all"):
        return None
    if value == "all":
        return ["all"]
    items = [v.strip() for v in value.split(",") if v.strip()]
    for v in items:
        Platform.parse(v)
    if len(set(items)) != len(items):
        raise UsageError(f"--platform {value} names a platform twice")
    return items


def _index(s: Session, opts: ComposeOptions, sel: TritonSelection, refs: dict[str, str], adds: list[LocalAdd],
           sources: dict[str, Source], many: list[str], key: str | None, tops: dict[str, str | None]) -> Result:
    """Every platform of min's index composed against the same platform of full's (and
    gpu-min's), then an index of them: per-platform manifests first, the index and tag last."""
    if opts.dry_run:
        raise UsageError("--dry-run composes one platform; pass --platform OS/ARCH")
    if not accepts_index(s.output):
        raise UsageError(f"{printable(str(s.output))} holds one image, not an index of platforms; pick one with "
                         "--platform OS/ARCH")
    indexes = {role: _platforms_of(role, src) for role, src in sources.items()}
    def alike(a: Platform, b: Platform) -> bool:
        return a.matches(b) or b.matches(a)

    common = [p for p in indexes["full"] if all(any(alike(p, q) for q in have) for have in indexes.values())]
    asked = common if many == ["all"] else [Platform.parse(v) for v in many]
    missing = [str(p) for p in asked if not any(alike(p, c) for c in common)]
    wanted = list(dict.fromkeys(next(c for c in common if alike(p, c)) for p in asked if not missing))
    if len(wanted) < len(asked) and not missing:
        raise UsageError(f"--platform {opts.platform} names one platform twice")
    if missing or not wanted:
        raise SelectionError(f"--platform {opts.platform}: {', '.join(missing) or 'no platform'} is not in every "
                             f"source index; they share {', '.join(str(p) for p in common) or 'none'}")
    results: list[Result] = []
    try:
        for platform in wanted:
            s.platform = platform
            images = {role: s.resolve(role, src) for role, src in sources.items()}
            if s.moved(tops, images):
                key = None
            name = f"{DOCKERFILE}.{platform}".replace("/", "-")
            results.append(_one(s, opts, sel, refs, adds, images, None, name, False))
            results[-1].platform = platform
        docker = all(r.media_type == model.DOCKER_MANIFEST for r in results)
        index = {
            "schemaVersion": 2, "mediaType": model.DOCKER_LIST if docker else model.OCI_INDEX,
            "manifests": [{"mediaType": r.media_type, "digest": r.manifest_digest, "size": r.manifest_size,
                           "platform": _platform_json(r.platform)} for r in results],
        }
        raw = canonical_json(index)
        sink = s.sink()
        sink.put_manifest(raw, str(index["mediaType"]))  # the index and the tag: last
        stats = {"memo_hit": 0, **sink.stats}
        for r in results:
            if r.verify is not None:
                for k, v in r.verify().items():
                    stats[k] = stats.get(k, 0) + v
    except BaseException:
        s.abort()
        raise
    lines = [line for r in results for line in [f"platform {r.platform}: {r.manifest_digest}", *r.plan_lines]]
    layers = [{**layer, "platform": str(r.platform)} for r in results for layer in r.layers]
    digest = sha256_digest(raw)
    libs = None
    if any(r.libs is not None for r in results):  # one report: each finding names its platform
        libs = LibReport(
            [dataclasses.replace(f, component=f"{r.platform} {f.component}") for r in results if r.libs
             for f in r.libs.findings],
            sum(r.libs.files_checked for r in results if r.libs),
            [f"{r.platform}: {n}" for r in results if r.libs for n in r.libs.notes],
            scope=sorted({c for r in results if r.libs for c in r.libs.scope}))
    if s.store is not None and key is not None:
        remember(s.store, key, raw, str(index["mediaType"]), "", layers, "", lines)
        if libs is not None:
            remember_report(s.store, key, libs)
    return Result(sink.label, digest, "", str(index["mediaType"]), layers, results[0].dockerfile, lines, stats,
                  manifest_size=len(raw), libs=libs)


def _platform_json(p: Platform | None) -> dict[str, str]:
    if p is None:
        return {}
    return {"architecture": p.architecture, "os": p.os, **({"variant": p.variant} if p.variant else {})}


def _platforms_of(role: str, src: Source) -> list[Platform]:
    raw, mt = src.manifest()
    if mt not in model.INDEX_TYPES:
        raise SelectionError(f"{role} image {printable(src.label)} is one image, not an index of platforms; "
                             "--platform all needs indexes")
    return [d.platform for d in Index.parse(raw, mt).manifests  # attestations (unknown/unknown) are not platforms
            if d.platform is not None and d.platform.os != "unknown"
            and "vnd.docker.reference.type" not in d.annotations]


def _one(s: Session, opts: ComposeOptions, sel: TritonSelection, refs: dict[str, str], adds: list[LocalAdd],
         images: dict[str, ResolvedImage], key: str | None, dockerfile_name: str, tag: bool) -> Result:
    """One platform's image: Dockerfile.compose rendered from what the images hold, built."""
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
    created = created_at(s, used)
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
    dockerfile = s.work / dockerfile_name
    dockerfile.write_text(text)
    final = parse(text, DOCKERFILE, {})
    lay = layout(final)
    if opts.dry_run:
        return _dry_run(s, final, lay, _by_key(lay, images), reads, notes, dockerfile)
    # its destinations are compose.py's own paths (and --add's under /opt/tritonserver): the
    # base's tree is not read to place them
    plan = assemble(s, final, lay, _by_key(lay, images), None, Ignore(), memo=key, speculation=speculation,
                    dockerfile=text, notes=notes, trusted=True)
    result = s.publish(plan, dockerfile_name, tag)
    if opts.push_index:
        result.plan_lines += s.push_indexes(list(plan.images.values()))
    return result


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
    lines = describe(reads, rec, notes)
    lines.append(f"dry run: layer headers read, no file body kept, nothing written but {DOCKERFILE}")
    lines.append(f"would write: {s.output}")
    return Result(str(s.output), "", "", "", [], dockerfile, lines, {}, dry_run=True)


__all__ = ["ComposeOptions", "ComposeResult", "compose"]
