"""The library API: ``compose(ComposeOptions) -> ComposeResult``.

Resolve the images, plan by diff_id, read only the full image's own layers, build the new
layers, derive the config, and publish: blobs first, tag last. Nothing reaches the
destination before every source byte that fed it has been verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ociassemble.engine.assemble import (
    ImagePlan,
    NewLayer,
    ScannedLayer,
    _prefix_filter,
    build_config,
    build_tree,
    can_be_docker,
    common_prefix,
    convert_desc,
    fill_missing_bodies,
    layer_media_type,
    link_to_lower_layers,
    parse_created,
    scan_layers,
    write_layers,
)
from ociassemble.engine.libcheck import LibReport, check_new_layers, recall_report, remember_report
from ociassemble.engine.recipe import Recipe
from ociassemble.engine.verify import verify_output
from ociassemble.errors import OciAssembleError, UsageError
from ociassemble.layers.compression import GZIP_LEVEL, CompressionSpec
from ociassemble.layers.localadd import fingerprint, local_tree, parse_adds
from ociassemble.layers.spec import LocalAdd
from ociassemble.layers.speculate import Speculation
from ociassemble.layers.spool import Spool
from ociassemble.layers.tree import Tree, resolve
from ociassemble.oci import model
from ociassemble.oci.changeset import SYMLINK
from ociassemble.oci.digest import sha256_digest
from ociassemble.oci.model import Descriptor, Platform, canonical_json
from ociassemble.oci.reference import RegistryRef, parse_output, parse_reference
from ociassemble.presets.triton import (
    ROOT,
    BaseChoice,
    TritonSelection,
    build_recipe,
    check_selection,
    image_refs,
    no_triton_root,
    read_facts,
)
from ociassemble.progress import Progress
from ociassemble.transport.atomic import part_file, remove_stale_scratch, scratch_dir
from ociassemble.transport.memo import memo_key, recall, remember
from ociassemble.transport.oserrors import is_local, local_error
from ociassemble.transport.registry.client import ClientOptions, RegistryClient
from ociassemble.transport.registry.credentials import CredentialOptions
from ociassemble.transport.segments import Segment, SegmentReader
from ociassemble.transport.sink import (
    Sink,
    accepts_docker,
    check_destination,
    destination_exists,
    local_path,
    open_sink,
)
from ociassemble.transport.source import Clients, ResolvedImage, Source, open_source, registry_client, resolve_image
from ociassemble.transport.store import DEFAULT_MAX_BYTES, Store, StoreSource, default_store_dir


@dataclass
class ComposeOptions:
    backends: list[str] = field(default_factory=list)
    repoagents: list[str] = field(default_factory=list)
    caches: list[str] = field(default_factory=list)
    container_version: str | None = None
    images: list[str] = field(default_factory=list)
    output_name: str = "tritonserver"
    work_dir: str = "."
    dry_run: bool = False
    enable_gpu: bool = True
    platform: str | None = None
    system_layers: str = "auto"
    base: str = "auto"  # "min": keep the named min as the base even when full was not built on it
    adds: list[str] = field(default_factory=list)  # SRC:DEST local content, a layer each (--add)
    add_chown: str | None = None  # UID[:GID] for the --add layers (default 0:0)
    compression: str = "gzip"
    jobs: int = 0
    tls_verify: bool = True
    cert_dir: str | None = None
    creds: str | None = None  # USER:PASSWORD for every registry of this run
    authfile: str | None = None
    timeout: float | None = None  # read timeout per request, seconds
    source_date_epoch: int | None = None
    verify: bool = False  # read the result back from the destination and check it
    store_dir: str | None = None  # default $XDG_CACHE_HOME/ociassemble
    no_store: bool = False
    store_max_bytes: int = DEFAULT_MAX_BYTES
    check_libs: str = "warn"  # warn | error | off: the new layers' shared-library check (libcheck.py)
    progress: Progress | None = None  # per-layer bytes and rates (the CLI's live display)
    log: Callable[[str], None] = lambda _m: None


@dataclass
class ComposeResult:
    output: str
    manifest_digest: str
    config_digest: str
    media_type: str
    layers: list[dict[str, object]]
    dockerfile: Path
    plan_lines: list[str]
    stats: dict[str, int]
    dry_run: bool = False
    libs: LibReport | None = None  # the shared-library check (None: --check-libs=off, or a dry run)


def _source_date_epoch(opts: ComposeOptions) -> int | None:
    if opts.source_date_epoch is not None:
        return opts.source_date_epoch
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds")
    return int(value)


def _client_options(opts: ComposeOptions) -> ClientOptions:
    base = ClientOptions(tls_verify=opts.tls_verify, cert_dir=opts.cert_dir)
    if opts.timeout is not None:
        if not 0 < opts.timeout < float("inf"):  # NaN too
            raise UsageError("--timeout must be a positive number of seconds")
        base = dataclasses.replace(base, read_timeout=opts.timeout, connect_timeout=min(30.0, opts.timeout))
    return base


def _clients(opts: ComposeOptions, clients: Clients, client_opts: ClientOptions
             ) -> Callable[[RegistryRef], RegistryClient]:
    """The registry client for a reference, shared by every use of one host in this run."""
    return lambda ref: registry_client(ref, options=client_opts, creds=_creds(opts), clients=clients)


def _open_sink(opts: ComposeOptions, clients: Clients, client_opts: ClientOptions) -> Sink:
    return open_sink(parse_output(opts.output_name), _clients(opts, clients, client_opts))  # digests refused there


def _creds(opts: ComposeOptions) -> CredentialOptions:
    return CredentialOptions(opts.creds, opts.authfile)


def _open_store(opts: ComposeOptions) -> Store | None:
    if opts.no_store:
        return None
    root = Path(opts.store_dir) if opts.store_dir else default_store_dir()
    try:
        store = Store(root, opts.store_max_bytes)
        with part_file(store.blobs):  # writable at all: find out now, not after the first download
            pass
        store.remove_stale()  # temporary files of killed runs
        return store
    except OSError as e:
        if not is_local(e):
            raise
        raise local_error(e, {"store": root}) from None


def _places(opts: ComposeOptions) -> dict[str, Path | str | None]:
    """The local places a run writes, by role: what an OS error is reported against."""
    try:
        out = parse_output(opts.output_name)
    except OciAssembleError:
        out = None
    return {"output": local_path(out) if out is not None else None, "work": opts.work_dir,
            "store": None if opts.no_store else (opts.store_dir or default_store_dir())}


def _memo_key(opts: ComposeOptions, sources: dict[str, Source], refs: dict[str, str], sde: int | None,
              spec: CompressionSpec, registry_out: bool, adds: list[LocalAdd]
              ) -> tuple[str | None, dict[str, str | None]]:
    digests = {role: src.top_digest() for role, src in sources.items()}  # one HEAD each
    if not all(digests.values()):
        return None, digests
    return memo_key({
        "refs": refs, "digests": digests, "backends": opts.backends, "repoagents": opts.repoagents,
        "caches": opts.caches, "gpu": opts.enable_gpu, "platform": opts.platform or "linux/amd64",
        "system_layers": opts.system_layers, "base": opts.base, "compression": [spec.kind, spec.level], "sde": sde,
        "registry_out": registry_out, "adds": fingerprint(adds),
    }), digests


def _from_memo(opts: ComposeOptions, store: Store, key: str, clients: Clients, client_opts: ClientOptions,
               log: Callable[[str], None]) -> ComposeResult | None:
    """An unchanged re-run: the destination already holds the memo's manifest, or only its tag is missing."""
    hit = recall(store, key)
    if hit is None:
        return None
    raw: bytes = hit["manifest_raw"]
    digest = sha256_digest(raw)
    out = parse_output(opts.output_name)
    if not destination_exists(out):
        return None  # nothing there yet; opening a layout sink would create the directory
    sink = _open_sink(opts, clients, client_opts)
    there, tagged = sink.holds(digest)
    if not there:
        log("memo: the destination lacks the remembered manifest; composing again")
        return None
    if not tagged:
        sink.put_manifest(raw, hit["media_type"])
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    dockerfile = work / "Dockerfile.compose"
    dockerfile.write_text(hit["dockerfile"])
    log(f"memo: unchanged inputs; {sink.label} already holds {digest}")
    return ComposeResult(
        output=sink.label, manifest_digest=digest, config_digest=hit["config_digest"],
        media_type=hit["media_type"], layers=hit["layers"], dockerfile=dockerfile,
        plan_lines=[*hit["plan"], "unchanged inputs: nothing read, nothing sent (memo)"],
        stats={"memo_hit": 1, "retagged": int(not tagged), "uploaded": 0, "mounted": 0, "skipped": 0,
               "downloaded_bytes": 0},
    )


def compose(opts: ComposeOptions) -> ComposeResult:
    """Compose; every failure is an :class:`OciAssembleError`, those of the local file system
    (full, read-only, a file in the way) a :class:`LocalFileError` naming the place."""
    try:
        return _compose(opts)
    except OSError as e:
        if not is_local(e):
            raise
        raise local_error(e, _places(opts), fallback="work") from None


def _compose(opts: ComposeOptions) -> ComposeResult:
    log = opts.log
    sel = TritonSelection(list(opts.backends), list(opts.repoagents), list(opts.caches), opts.enable_gpu)
    if opts.system_layers not in ("auto", "none"):
        raise UsageError("--system-layers must be auto or none")
    if opts.base not in ("auto", "min"):
        raise UsageError("--base must be auto or min")
    spec = CompressionSpec.parse(opts.compression)
    refs = image_refs(opts.images, opts.container_version, opts.enable_gpu, sel)
    adds = parse_adds(list(opts.adds), opts.add_chown)
    platform = Platform.parse(opts.platform) if opts.platform else None
    parsed_out = parse_output(opts.output_name)  # fail on a bad output name before any work
    clients: Clients = {}
    client_opts = _client_options(opts)
    jobs = opts.jobs or min(4, max(2, os.cpu_count() or 2))
    sde = _source_date_epoch(opts)

    remove_stale_scratch(Path(opts.work_dir))  # scratch folders of killed runs (a memo hit too)
    store = _open_store(opts)
    sources = {role: open_source(parse_reference(refs[role]), options=client_opts, creds=_creds(opts),
                                 clients=clients)
               for role in ("min", "full", "gpu-min") if role in refs and (role != "gpu-min" or sel.needs_gpu_min)}
    key, tops = None, {}
    if store is not None and not opts.dry_run:
        key, tops = _memo_key(opts, sources, refs, sde, spec, accepts_docker(parsed_out), adds)
        # an unchanged re-run repeats the remembered check (or fails, for error); without one, compose again
        libs = recall_report(store, key, opts.check_libs) if key is not None and not opts.verify else None
        if key is not None and not opts.verify and (opts.check_libs == "off" or libs is not None):
            done = _from_memo(opts, store, key, clients, client_opts, log)
            if done is not None:
                done.libs = libs
                return done

    images: dict[str, ResolvedImage] = {}
    for role, src in sources.items():
        kept = StoreSource(src, store) if store is not None else src
        images[role] = resolve_image(role, kept, platform)
        log(f"{role}: {images[role].name} -> {images[role].digest}")
        if key is not None and tops.get(role) != (images[role].index_digest or images[role].digest):
            key = None  # the tag moved between the HEAD and the read: remember nothing
    mn, full = images["min"], images["full"]
    arch = full.config.platform.architecture
    if mn.config.platform.architecture != arch:
        raise UsageError(
            f"min image is {mn.config.platform} but full image is {full.config.platform}; use images of one platform"
        )
    facts = read_facts(mn.config, full.config, opts.enable_gpu, full.name, mn.name)

    shared = common_prefix(mn.config.diff_ids, full.config.diff_ids)
    plan = ImagePlan(mn, full, shared)
    if not plan.min_is_base:
        log(f"min and full share {shared} of min's {len(mn.config.diff_ids)} layers: min is not full's base")
        if opts.system_layers == "auto" and opts.base == "auto":
            plan.base = "full"
    rest = list(range(shared, len(full.manifest.layers)))
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    dockerfile = work / "Dockerfile.compose"

    if opts.dry_run:
        return _dry_run(opts, sel, facts, images, refs, plan, rest, arch, dockerfile, parsed_out, adds)
    # wrong push credentials, a read-only or blocked output: they fail now, not after the layer work
    check_destination(parsed_out, _clients(opts, clients, client_opts))
    held = contextlib.ExitStack()
    scratch = held.enter_context(scratch_dir(work))  # locked while this run lives
    sink: Sink | None = None
    try:
        spool = Spool(scratch / "spool", deflate_level=GZIP_LEVEL if spec.kind == "gzip" else None,
                      hash_bodies=opts.verify)
        # bodies are kept only under the trees the recipe copies, which the selection fixes
        # before any layer is read (unselected backends are neither compressed nor spooled);
        # a source reached through a symlink elsewhere is read again by fill_missing_bodies
        early = build_recipe(sel, facts, Tree(), arch, None, "", refs)
        wanted = [*early.wanted_prefixes("full"), "usr/bin/serve"]
        created = sde if sde is not None else parse_created(full.config.data.get("created"))
        speculation = Speculation(early.layers, created, sde, spool) if spec.kind == "gzip" else None
        scanned = scan_layers(full, rest, _prefix_filter(wanted), spool, jobs, log, opts.progress, speculation)
        merged = _split(plan, scanned, opts.system_layers)
        full_tree = build_tree(merged)
        check_selection(full_tree, sel, full.name)
        if _leads_below(early, full_tree):
            # COPY --from=full sees full's whole filesystem: a selected symlink may lead into
            # a system layer or one shared with min. The tree is then built over every layer
            # (headers of the unread ones only; their bodies are fetched by fill_missing_bodies)
            unread = [i for i in range(len(full.manifest.layers)) if i not in plan.read]
            log(f"a selected symlink leads below the layers read: reading the headers of {len(unread)} more")
            merged = sorted([*scanned, *scan_layers(full, unread, lambda _p: False, spool, jobs, log)],
                            key=lambda sl: sl.index)
            full_tree = build_tree(merged, complete=True)
        lower = list(range(merged[0].index)) if merged else []
        trees: dict[str, Tree] = {"full": full_tree}
        gpu_layers: list[ScannedLayer] = []
        if sel.needs_gpu_min:
            gpu_layers = _scan_gpu_min(images["gpu-min"], _prefix_filter(GPU_MIN_TREES), spool, jobs, log)
            trees["gpu-min"] = build_tree(gpu_layers, complete=True)
        recipe = build_recipe(sel, facts, full_tree, arch, trees.get("gpu-min"),
                              images["gpu-min"].name if "gpu-min" in images else "", refs,
                              _base_choice(plan, opts), adds)
        for a in adds:
            trees[a.key] = local_tree(a, created, spool)
        dockerfile.write_text(recipe.dockerfile)
        fill_missing_bodies(full, merged, full_tree, recipe.layers, spool, jobs, log)
        link_to_lower_layers(full, lower, full_tree, recipe.layers, spool, jobs, log)
        if "gpu-min" in trees:
            fill_missing_bodies(images["gpu-min"], gpu_layers, trees["gpu-min"], recipe.layers, spool, jobs, log)
        names = {role: img.name for role, img in images.items()} | {a.key: a.src for a in adds}
        blobs = scratch / "out"
        blobs.mkdir()
        base_descs = [d for d, _ in plan.base_layers()]
        docker = (plan.base_image.manifest.is_docker and spec.kind == "gzip" and can_be_docker(base_descs)
                  and accepts_docker(parsed_out))
        new_type = layer_media_type(spec.kind, docker)
        sink = _open_sink(opts, clients, client_opts)
        # every source byte is verified by now: publishing starts while layers are still being
        # written (reused blobs at once, each new layer as soon as it is done); the tag waits
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            sent = [pool.submit(sink.copy_blob, d, img.source) for d, img in _reused(plan)]

            def publish(n: NewLayer) -> None:
                if n.source is not None:
                    sent.append(pool.submit(sink.copy_blob, n.source, full.source))
                else:
                    sent.append(pool.submit(sink.put_new, Descriptor(new_type, n.written.digest, n.written.size),
                                            n.written.open))

            new = write_layers(recipe.layers, trees, spool, blobs, spec, created, sde, jobs, names, log, publish,
                               speculation, merged)
            for f in list(sent):
                f.result()

        config = build_config(plan, recipe, new, created)
        # before anything is tagged: for --check-libs=error a missing library ends the run here
        libs = check_new_layers(opts.check_libs, plan.base_layers(), new, full, config, scratch, store, jobs, log,
                                opts.progress)
        config_raw = canonical_json(config)
        config_desc = Descriptor(model.DOCKER_CONFIG if docker else model.OCI_CONFIG,
                                 sha256_digest(config_raw), len(config_raw))
        layer_descs = [convert_desc(d, docker) for d in base_descs]
        layer_descs += [convert_desc(n.source, docker) if n.source is not None
                        else Descriptor(new_type, n.written.digest, n.written.size) for n in new]
        manifest_obj: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": model.DOCKER_MANIFEST if docker else model.OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layer_descs],
        }
        if plan.base == "min":  # standing on part of full, the result has no base image to name
            manifest_obj["annotations"] = {model.ANNOTATION_BASE_NAME: refs["min"],
                                           model.ANNOTATION_BASE_DIGEST: mn.digest}
        manifest_raw = canonical_json(manifest_obj)
        media_type = str(manifest_obj["mediaType"])

        cfg_path = scratch / "config.json"
        cfg_path.write_bytes(config_raw)
        sink.put_new(config_desc, lambda: SegmentReader([Segment(cfg_path, 0, len(config_raw))]))
        sink.put_manifest(manifest_raw, media_type)  # by digest, then the tag: last
        stats = dict(sink.stats)
        if opts.verify:
            stats.update(verify_output(sink, manifest_raw, config_raw, new, log))
        plan_lines = _plan_lines(plan, images, recipe.layers)
        plan_lines += [f"new layer '{n.spec.name}' passed through: full's layer {n.source.digest} holds exactly "
                       "its entries" for n in new if n.source is not None]
        layers_out: list[dict[str, object]] = [
            {"name": n.spec.name, "digest": n.written.digest, "diff_id": n.written.diff_id,
             "size": n.written.size, "entries": n.written.entries, "passed_through": n.source is not None}
            for n in new]
        if store is not None:
            stats.update(store.stats)
            if key is not None:
                remember(store, key, manifest_raw, media_type, config_desc.digest, layers_out, recipe.dockerfile,
                         plan_lines)
                if libs is not None:
                    remember_report(store, key, libs)
            store.prune()
        result = ComposeResult(
            output=sink.label, manifest_digest=sha256_digest(manifest_raw), config_digest=config_desc.digest,
            media_type=media_type,
            layers=layers_out, dockerfile=dockerfile, plan_lines=plan_lines, stats=stats, libs=libs,
        )
        return result
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        held.close()


def _leads_below(recipe: Recipe, tree: Tree) -> bool:
    """A required source of full reached through a symlink that the tree of the layers read
    cannot follow to its end (its target lies in a layer below them, or nowhere)."""
    def through_symlink(path: str) -> bool:
        parts = path.split("/")
        for k in range(1, len(parts) + 1):
            node = tree.get("/".join(parts[:k]))
            if node is None:
                return False
            if node.kind == SYMLINK:
                return True
        return False

    return any(c.image == "full" and c.required and resolve(tree, c.src) is None and through_symlink(c.src)
               for spec in recipe.layers for c in spec.copies)


def _reused(plan: ImagePlan) -> list[tuple[Descriptor, ResolvedImage]]:
    """The base layers (min's or full's) and the carried system layers: copied (mounted,
    skipped) as they are."""
    return [(d, img) for d, img in plan.base_layers() if d.media_type not in model.FOREIGN_LAYER_TYPES]


def _base_choice(plan: ImagePlan, opts: ComposeOptions) -> BaseChoice:
    if plan.system:
        reason = ""
    elif opts.system_layers == "none":
        reason = "--system-layers none was given"
    elif not plan.min_is_base:
        reason = ("min is not the image full was built on, so full's build of them cannot be carried "
                  "(--base auto stands the image on full's own base instead)")
    else:
        reason = "full has no layer between min's and its first /opt/tritonserver layer"
    return BaseChoice(plan.base, len(plan.system), plan.shared, len(plan.min.config.diff_ids), reason)


def _plan_lines(plan: ImagePlan, images: dict[str, ResolvedImage], layers: list) -> list[str]:  # type: ignore[type-arg]
    lines = [f"{role}: {img.name} {img.digest}" for role, img in images.items()]
    n_min = len(plan.min.config.diff_ids)
    if plan.base == "full":
        lines.append(f"base: full's layers below its first /{ROOT} layer (the OS full was built on and what its "
                     f"build installed); min shares {plan.shared} of its {n_min} layers with full, so it is not "
                     "full's base and is not used (--base min keeps it)")
    else:
        lines.append(f"reused from min: {len(plan.min.manifest.layers)} layers (not read)")
        lines.append(f"full layers shared with min: {plan.shared} (not read)")
        if not plan.min_is_base:
            lines.append(f"warning: min shares {plan.shared} of its {n_min} layers with full: it is not full's base, "
                         "so nothing full's build installed (python3, libraries, the triton-server user) is carried; "
                         "the server may not start (--base auto stands the image on full's own base)")
    lines.append(f"system layers carried from full: {len(plan.system)} {plan.system}")
    lines.append(f"full layers read: {len(plan.read)} {plan.read}")
    for spec in layers:
        lines.append(f"new layer '{spec.name}': " + ", ".join(f"/{c.src}" for c in spec.copies))
    return lines


GPU_MIN_TREES = ["usr/local/cuda", "opt/hpcx", "usr/lib"]


def _scan_gpu_min(gm: ResolvedImage, want: Callable[[str], bool], spool: Spool, jobs: int,
                  log: Callable[[str], None]) -> list[ScannedLayer]:
    return scan_layers(gm, list(range(len(gm.manifest.layers))), want, spool, jobs, log)


def _split(plan: ImagePlan, scanned: list[ScannedLayer], system_layers: str) -> list[ScannedLayer]:
    """Decide the system layers from the headers read: those before full's first layer
    writing /opt/tritonserver. Returns the layers whose merged tree the copies come from."""
    first = next((k for k, sl in enumerate(scanned) if sl.touches(ROOT)), None)
    if first is None:
        raise no_triton_root(plan.full.name)
    plan.read = [sl.index for sl in scanned]
    if plan.base == "full":
        plan.system = list(range(scanned[first].index))
        return scanned[first:]
    if system_layers == "auto" and plan.min_is_base:
        plan.system = [sl.index for sl in scanned[:first]]
        return scanned[first:]
    return scanned


def _dry_run(opts: ComposeOptions, sel: TritonSelection, facts, images, refs, plan: ImagePlan,  # type: ignore[no-untyped-def]
             rest: list[int], arch: str, dockerfile: Path, parsed_out, adds: list[LocalAdd]) -> ComposeResult:
    """Nothing is written but Dockerfile.compose, and no file body is kept: the full image's
    layers (and gpu-min's) are read for their headers only (or taken from the store's
    index), so that the split, the names checked and the file are those of the real run."""
    jobs = opts.jobs or min(4, max(2, os.cpu_count() or 2))
    with tempfile.TemporaryDirectory(prefix="ociassemble-dry-") as tmp:
        spool = Spool(Path(tmp))  # never written: no body is wanted

        def nothing(_path: str) -> bool:
            return False

        scanned = scan_layers(plan.full, rest, nothing, spool, jobs, opts.log, opts.progress)
        full_tree = build_tree(_split(plan, scanned, opts.system_layers))
        check_selection(full_tree, sel, plan.full.name)
        gpu_tree = None
        if sel.needs_gpu_min:
            gpu_tree = build_tree(_scan_gpu_min(images["gpu-min"], nothing, spool, jobs, opts.log), complete=True)
    recipe = build_recipe(sel, facts, full_tree, arch, gpu_tree,
                          images["gpu-min"].name if "gpu-min" in images else "", refs, _base_choice(plan, opts),
                          adds)
    dockerfile.write_text(recipe.dockerfile)
    lines = _plan_lines(plan, images, recipe.layers)
    lines.append("dry run: layer headers read, no file body kept, nothing written but Dockerfile.compose")
    lines.append(f"would write: {parsed_out}")
    return ComposeResult(str(parsed_out), "", "", "", [], dockerfile, lines, {}, dry_run=True)
