"""One run of the engine, whatever front end planned it: resolve → read → write and
publish → manifest → memo.

A front end (the Triton preset, the Dockerfile builder) opens a :class:`Session`, resolves
the images it names, reads the layers it needs (:meth:`Session.scan`), and hands a
:class:`Plan` to :meth:`Session.publish`: what the result stands on (:class:`Base`), the
new layers and config changes (:class:`~ociassemble.engine.recipe.Recipe`) and the merged
trees they copy from. Nothing reaches the destination before every source byte that fed
it has been verified, and the tag is written last.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ociassemble.engine.assemble import (
    NewLayer,
    ScannedLayer,
    can_be_docker,
    convert_desc,
    fill_missing_bodies,
    layer_media_type,
    link_to_lower_layers,
    rfc3339,
    scan_layers,
    split_source_layer,
    write_layers,
)
from ociassemble.engine.indexes import discover, make, push
from ociassemble.engine.libcheck import LibReport, check_new_layers, recall_report, remember_report
from ociassemble.engine.recipe import Recipe
from ociassemble.engine.verify import verify_output
from ociassemble.errors import NotFound, OciAssembleError, UsageError
from ociassemble.layers.compression import GZIP_LEVEL, CompressionSpec
from ociassemble.layers.speculate import Speculation
from ociassemble.layers.spool import Spool
from ociassemble.layers.tree import Tree
from ociassemble.layers.write import WrittenLayer
from ociassemble.oci import model
from ociassemble.oci.digest import sha256_digest
from ociassemble.oci.model import Descriptor, Platform, canonical_json
from ociassemble.oci.reference import RegistryRef, parse_output, parse_reference
from ociassemble.progress import Progress
from ociassemble.transport.atomic import part_file, remove_stale_scratch, scratch_dir
from ociassemble.transport.memo import memo_key, recall, remember
from ociassemble.transport.oserrors import is_local, local_error
from ociassemble.transport.registry.client import ClientOptions, RegistryClient
from ociassemble.transport.registry.credentials import CredentialOptions
from ociassemble.transport.segments import Segment, SegmentReader
from ociassemble.transport.sink import Sink
from ociassemble.transport.source import Clients, ResolvedImage, Source, registry_client, resolve_image
from ociassemble.transport.store import DEFAULT_MAX_BYTES, Store, StoreSource, default_store_dir
from ociassemble.transport.table import (
    accepts_docker,
    check_destination,
    destination_exists,
    local_path,
    open_sink,
    open_source,
)

Log = Callable[[str], None]


@dataclass
class RunOptions:
    """What every command that writes an image takes: the output, the transports and the store."""

    output_name: str = "tritonserver"
    work_dir: str = "."
    dry_run: bool = False
    platform: str | None = None
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
    check_libs: str = "warn"  # warn | error | off: the new layers' shared-library check
    max_layer_size: int | None = None  # no new layer's blob bigger (a layer is split by whole files)
    split_reused: bool = False  # reused layers over max_layer_size rewritten as several too
    index_from: str | None = None  # where published layer indexes are looked for (default: each image's repository)
    push_index: bool = False  # after the run, publish the indexes of the layers read
    use_indexes: bool = True  # look for published layer indexes at all
    progress: Progress | None = None  # per-layer bytes and rates (the CLI's live display)
    log: Callable[[str], None] = lambda _m: None


@dataclass
class Result:
    output: str
    manifest_digest: str
    config_digest: str
    media_type: str
    layers: list[dict[str, object]]
    dockerfile: Path | None
    plan_lines: list[str]
    stats: dict[str, int]
    dry_run: bool = False
    libs: LibReport | None = None  # the shared-library check (None: --check-libs=off, or a dry run)
    manifest_size: int = 0
    platform: Platform | None = None
    verify: Callable[[], dict[str, int]] | None = None  # a platform's --verify, run once its index is tagged


@dataclass
class Base:
    """What the result stands on: layers carried as they are (never read, never recompressed),
    and the image whose config the result starts from."""

    image: ResolvedImage  # config (env, labels, entrypoint, ...) and history start from it
    layers: list[tuple[Descriptor, ResolvedImage]]  # in order, each with the image it is copied from
    diff_ids: list[str]
    history: list[Any] | None  # the carried layers' history entries (None: no history aligned with them)
    annotations: dict[str, str] = field(default_factory=dict)
    written: dict[str, WrittenLayer] = field(default_factory=dict)  # parts of a layer split by --split-reused


@dataclass
class Plan:
    """The engine's whole input: everything but the bytes."""

    base: Base
    recipe: Recipe
    trees: dict[str, Tree]  # by name: image stages and local content the recipe copies from
    images: dict[str, ResolvedImage]  # the image behind each image tree (bodies not yet read come from it)
    scanned: dict[str, list[ScannedLayer]]  # the layers each image tree was built from
    lower: dict[str, list[int]]  # layers of that image below them (hardlink targets are looked up there)
    candidates: list[ScannedLayer]  # source layers that may stand in for a new layer (same entries)
    names: dict[str, str]  # tree name -> what to call it in messages
    created: int
    dockerfile: str = ""  # written to the work directory as Dockerfile.compose (empty: none)
    plan_lines: list[str] = field(default_factory=list)
    memo: str | None = None  # the memo key; None: remember nothing
    speculation: Speculation | None = None


def source_date_epoch(value: int | None) -> int | None:
    if value is not None:
        return value
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None or env == "":
        return None
    if not env.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds")
    return int(env)


def client_options(tls_verify: bool, cert_dir: str | None, timeout: float | None) -> ClientOptions:
    """The registry client's options from a command's --tls-verify, --cert-dir and --timeout."""
    base = ClientOptions(tls_verify=tls_verify, cert_dir=cert_dir)
    if timeout is not None:
        if not 0 < timeout < float("inf"):  # NaN too
            raise UsageError("--timeout must be a positive number of seconds")
        base = dataclasses.replace(base, read_timeout=timeout, connect_timeout=min(30.0, timeout))
    return base


def places(opts: RunOptions) -> dict[str, Path | str | None]:
    """The local places a run writes, by role: what an OS error is reported against."""
    try:
        out = parse_output(opts.output_name)
    except OciAssembleError:
        out = None
    return {"output": local_path(out) if out is not None else None, "work": opts.work_dir,
            "store": None if opts.no_store else (opts.store_dir or default_store_dir())}


def translating_os_errors(run: Callable[[], Result], opts: RunOptions) -> Result:
    """Every failure an :class:`OciAssembleError`; those of the local file system (full,
    read-only, a file in the way) a :class:`LocalFileError` naming the place."""
    try:
        return run()
    except OSError as e:
        if not is_local(e):
            raise
        raise local_error(e, places(opts), fallback="work") from None


class Session:
    """One run's shared state: registry clients (one per host and credential), the store,
    the scratch folder (locked while the run lives), the spool and the read layers."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.log = opts.log
        self.spec = CompressionSpec.parse(opts.compression)
        # "all" or "P1,P2": an index, whose front end sets each platform in turn
        single = opts.platform and opts.platform != "all" and "," not in opts.platform
        self.platform = Platform.parse(opts.platform) if single else None
        self.output = parse_output(opts.output_name)  # a bad output name fails before any work
        self.clients: Clients = {}
        self.client_opts = client_options(opts.tls_verify, opts.cert_dir, opts.timeout)
        self.creds = CredentialOptions(opts.creds, opts.authfile)
        self.jobs = opts.jobs or min(4, max(2, os.cpu_count() or 2))
        self.sde = source_date_epoch(opts.source_date_epoch)
        self.work = Path(opts.work_dir)
        remove_stale_scratch(self.work)  # scratch folders of killed runs (a memo hit too)
        self.store = self._open_store()
        self._held = contextlib.ExitStack()
        self._scratch: Path | None = None
        self._spool: Spool | None = None
        self._read: dict[tuple[str, int], ScannedLayer] = {}
        self._sink: Sink | None = None
        self._discovered: set[str] = set()  # images whose published layer indexes were looked for
        self._published = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._held.close()

    def _open_store(self) -> Store | None:
        if self.opts.no_store:
            return None
        root = Path(self.opts.store_dir) if self.opts.store_dir else default_store_dir()
        try:
            store = Store(root, self.opts.store_max_bytes)
            with part_file(store.blobs):  # writable at all: find out now, not after the first download
                pass
            store.remove_stale()  # temporary files of killed runs
            return store
        except OSError as e:
            if not is_local(e):
                raise
            raise local_error(e, {"store": root}) from None

    # -- sources ------------------------------------------------------------------------------

    def client(self, ref: RegistryRef) -> RegistryClient:
        """The registry client for a reference, shared by every use of one host in this run."""
        return registry_client(ref, options=self.client_opts, creds=self.creds, clients=self.clients)

    def source(self, ref: str) -> Source:
        return open_source(parse_reference(ref), options=self.client_opts, creds=self.creds, clients=self.clients)

    def resolve(self, role: str, src: Source) -> ResolvedImage:
        kept: Source = src
        if self.store is not None:
            stored = StoreSource(src, self.store)
            if not self.opts.use_indexes:
                stored.index_origins = None
            elif self.opts.index_from and stored.index_origins is not None:
                where = self.source(self.opts.index_from).registry()
                if where is not None:
                    stored.index_origins = stored.index_origins | {f"{where[0].host}/{where[1]}"}
            kept = stored
        elif not self.opts.use_indexes:
            kept.uses_indexes = False  # no store, and no eStargz TOC either
        image = resolve_image(role, kept, self.platform)
        self.log(f"{role}: {image.name} -> {image.digest}")
        return image

    # -- scratch space and reading ---------------------------------------------------------------

    @property
    def scratch(self) -> Path:
        if self._scratch is None:
            self.work.mkdir(parents=True, exist_ok=True)
            self._scratch = self._held.enter_context(scratch_dir(self.work))
        return self._scratch

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self.scratch / "spool",
                                deflate_level=GZIP_LEVEL if self.spec.kind == "gzip" else None,
                                hash_bodies=self.opts.verify)
        return self._spool

    def scan(self, image: ResolvedImage, indices: list[int], want: Callable[[str], bool],
             speculation: Speculation | None = None, progress: bool = True) -> list[ScannedLayer]:
        """The layers' headers (and the bodies ``want`` names), each read at most once a run:
        a layer read before is returned as it was read (bodies it did not keep are filled
        later, by the targeted read of :func:`fill_missing_bodies`)."""
        todo = [i for i in indices if (image.digest, i) not in self._read]
        for sl in scan_layers(image, todo, want, self.spool, self.jobs, self.log,
                              self.opts.progress if progress else None, speculation):
            self._read[(image.digest, sl.index)] = sl
        return [self._read[(image.digest, i)] for i in indices]

    # -- memo ---------------------------------------------------------------------------------------

    def memo_key(self, parts: dict[str, Any], sources: dict[str, Source]) -> tuple[str | None, dict[str, str | None]]:
        """The memo key of this run (None: a source cannot name its digest with one HEAD)."""
        if self.store is None:
            return None, {}
        digests = {role: src.top_digest() for role, src in sources.items()}  # one HEAD each
        if not all(digests.values()):
            return None, digests
        return memo_key({**parts, "digests": digests, "compression": [self.spec.kind, self.spec.level],
                         "sde": self.sde, "registry_out": accepts_docker(self.output),
                         "max_layer_size": self.opts.max_layer_size, "split_reused": self.opts.split_reused,
                         "platform": self.opts.platform or "linux/amd64"}), digests

    @staticmethod
    def moved(tops: dict[str, str | None], images: dict[str, ResolvedImage]) -> bool:
        """A tag named another digest at the memo's HEAD than at the read (then nothing is
        remembered: the key would describe other inputs)."""
        return any(key in tops and tops[key] != (img.index_digest or img.digest) for key, img in images.items())

    def recall(self, key: str | None, dockerfile_name: str) -> Result | None:
        """An unchanged re-run: the destination already holds the memo's manifest, or only its
        tag is missing. The remembered library check is repeated (for ``error``, it fails)."""
        if key is None or self.store is None or self.opts.verify:
            return None
        libs = recall_report(self.store, key, self.opts.check_libs)
        if self.opts.check_libs != "off" and libs is None:
            return None
        hit = recall(self.store, key)
        if hit is None:
            return None
        raw: bytes = hit["manifest_raw"]
        digest = sha256_digest(raw)
        if not destination_exists(self.output):
            return None  # nothing there yet; opening a layout sink would create the directory
        sink = open_sink(self.output, self.client)
        there, tagged = sink.holds(digest)
        if not there:
            self.log("memo: the destination lacks the remembered manifest; assembling again")
            return None
        if not tagged:
            sink.put_manifest(raw, hit["media_type"])
        dockerfile = None
        if hit.get("dockerfile"):
            self.work.mkdir(parents=True, exist_ok=True)
            dockerfile = self.work / dockerfile_name
            dockerfile.write_text(hit["dockerfile"])
        self.log(f"memo: unchanged inputs; {sink.label} already holds {digest}")
        return Result(
            output=sink.label, manifest_digest=digest, config_digest=hit["config_digest"],
            media_type=hit["media_type"], layers=hit["layers"], dockerfile=dockerfile,
            plan_lines=[*hit["plan"], "unchanged inputs: nothing read, nothing sent (memo)"],
            stats={"memo_hit": 1, "retagged": int(not tagged), "uploaded": 0, "mounted": 0, "skipped": 0,
                   "downloaded_bytes": 0},
            libs=libs,
        )

    def sink(self) -> Sink:
        """The destination, opened once a run (an index's platforms and the index itself go
        through one sink: an archive is written whole at the last tag)."""
        if self._sink is None:
            self._sink = open_sink(self.output, self.client)
        return self._sink

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()

    def _split_reused(self, base: Base, cap: int, out: Path) -> Base:
        """``--split-reused``: each carried layer over the cap read (bodies too) and written
        as several; the manifest, diff_ids and history list the parts in its place."""
        layers: list[tuple[Descriptor, ResolvedImage]] = []
        diff_ids: list[str] = []
        history = None if base.history is None else []
        hist = iter(base.history or [])
        written = dict(base.written)
        new_type = layer_media_type(self.spec.kind, False)
        for (desc, img), diff_id in zip(base.layers, base.diff_ids, strict=True):
            entry = None
            if history is not None:  # the empty-layer entries before this layer's own
                for h in hist:
                    if isinstance(h, dict) and h.get("empty_layer"):
                        history.append(h)
                        continue
                    entry = h
                    break
            if desc.size <= cap or desc.media_type in model.FOREIGN_LAYER_TYPES:
                layers.append((desc, img))
                diff_ids.append(diff_id)
                if history is not None and entry is not None:
                    history.append(entry)
                continue
            i = next(k for k, d in enumerate(img.manifest.layers) if d.digest == desc.digest)
            sl = self.scan(img, [i], lambda _p: True)[0]
            parts = split_source_layer(sl, cap, self.spool, out, self.spec, f"layer {i} of {img.role}")
            self.log(f"layer {i} of {img.role} ({desc.size} bytes) split into {len(parts)} layers of at most {cap}")
            for k, w in enumerate(parts, 1):
                d = Descriptor(new_type, w.digest, w.size)
                layers.append((d, img))
                diff_ids.append(w.diff_id)
                written[w.digest] = w
                if history is not None and entry is not None:
                    history.append({**entry, "comment": f"{entry.get('comment') or ''} (part {k} of {len(parts)}, "
                                                        "--split-reused)".lstrip()})
        if history is not None:
            history += list(hist)
        return dataclasses.replace(base, layers=layers, diff_ids=diff_ids, history=history, written=written)

    def discover_indexes(self, image: ResolvedImage) -> int:
        """Published layer indexes of an image read (in its repository, or --index-from's),
        checked and kept in the store: its layers are then read only where needed."""
        if self.store is None or not self.opts.use_indexes or image.digest in self._discovered:
            return 0  # asked once a run (compose reads its stages for a draft, then for the file)
        self._discovered.add(image.digest)
        where = self.source(self.opts.index_from) if self.opts.index_from else None
        try:
            return discover(self.store, image, self.log, where)
        except NotFound:
            return 0

    def push_indexes(self, images: list[ResolvedImage]) -> list[str]:
        """``--push-index``: the indexes of the images read, made from the store's copies of
        their layers, published beside each image; returns one line per artifact."""
        if self.store is None:
            raise UsageError("--push-index makes indexes from the store's copies of the layers: drop --no-store")
        lines = []
        for image in images:
            desc = push(image, make(self.store, image, self.log))
            lines.append(f"layer indexes of {image.role} published: {desc.digest}")
        return lines

    def check_destination(self) -> None:
        """Wrong push credentials, a read-only or blocked output: they fail now, not after the layer work."""
        check_destination(self.output, self.client)

    # -- publishing -----------------------------------------------------------------------------------

    def publish(self, plan: Plan, dockerfile_name: str = "Dockerfile.compose", tag: bool = True) -> Result:
        """Write the new layers and publish the image: blobs as they are ready, then the
        config, the manifest by digest, and the tag last (``tag=False``: a platform of an
        index, whose tag comes with the index)."""
        opts, log, spool = self.opts, self.log, self.spool
        dockerfile = None
        if plan.dockerfile:
            dockerfile = self.work / dockerfile_name
            dockerfile.write_text(plan.dockerfile)
        specs = plan.recipe.layers
        for key, image in plan.images.items():
            fill_missing_bodies(image, plan.scanned.get(key, []), plan.trees[key], specs, spool, self.jobs, log)
            if plan.lower.get(key):
                link_to_lower_layers(image, plan.lower[key], plan.trees[key], specs, spool, self.jobs, log)
        # a folder of its own for each image of the run: a layout sink hardlinks these files
        # into place, so none may ever be written again
        self._published += 1
        blobs = self.scratch / f"out-{self._published}"
        blobs.mkdir()
        if opts.split_reused and opts.max_layer_size:
            plan.base = self._split_reused(plan.base, opts.max_layer_size, blobs)
        base_descs = [d for d, _ in plan.base.layers]
        docker = (plan.base.image.manifest.is_docker and self.spec.kind == "gzip" and can_be_docker(base_descs)
                  and accepts_docker(self.output))
        new_type = layer_media_type(self.spec.kind, docker)
        sink: Sink | None = None
        try:
            sink = self.sink()
            # every source byte is verified by now: publishing starts while layers are still
            # being written (reused blobs at once, each new layer as soon as it is done)
            with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
                target = sink
                split_parts = plan.base.written
                sent = [pool.submit(target.put_new, d, split_parts[d.digest].open) if d.digest in split_parts
                        else pool.submit(target.copy_blob, d, img.source) for d, img in plan.base.layers
                        if d.media_type not in model.FOREIGN_LAYER_TYPES]

                def publish(n: NewLayer) -> None:
                    if n.source is not None and n.origin is not None:
                        sent.append(pool.submit(target.copy_blob, n.source, n.origin.source))
                    else:
                        sent.append(pool.submit(target.put_new,
                                                Descriptor(new_type, n.written.digest, n.written.size),
                                                n.written.open))

                origins = {id(sl): img for key, img in plan.images.items() for sl in plan.scanned.get(key, [])}
                new = write_layers(specs, plan.trees, spool, blobs, self.spec, plan.created, self.sde, self.jobs,
                                   plan.names, log, publish, plan.speculation, plan.candidates, origins,
                                   opts.max_layer_size)
                config = build_config(plan.base, plan.recipe, new, plan.created)
                # while the blobs are still on their way (the check reads the layers, the uploads
                # mostly wait on the destination), and before anything is tagged: for
                # --check-libs=error a missing library ends the run here
                try:
                    libs = check_new_layers(opts.check_libs, plan.base.layers, new, config, self.scratch,
                                            self.store, self.jobs, log, opts.progress, plan.base.written)
                except BaseException:
                    for f in sent:
                        f.cancel()
                    raise
                for f in list(sent):
                    f.result()
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
            if plan.base.annotations:
                manifest_obj["annotations"] = dict(plan.base.annotations)
            manifest_raw = canonical_json(manifest_obj)
            media_type = str(manifest_obj["mediaType"])
            cfg_path = blobs / "config.json"
            cfg_path.write_bytes(config_raw)
            sink.put_new(config_desc, lambda: SegmentReader([Segment(cfg_path, 0, len(config_raw))]))
            sink.put_manifest(manifest_raw, media_type, tag)  # by digest, then the tag: last
            stats = {"memo_hit": 0, **sink.stats}
            if opts.verify and tag:
                stats.update(verify_output(sink, manifest_raw, config_raw, new, log))
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        plan_lines = list(plan.plan_lines)
        cap = opts.max_layer_size
        plan_lines += [f"warning: layer {d.digest} of {img.role}, carried as it is, is {d.size} bytes, over "
                       f"--max-layer-size {cap}" for d, img in plan.base.layers if cap and d.size > cap]
        plan_lines += [f"new layer '{n.spec.name}' passed through: layer {n.source.digest} of "
                       f"{n.origin.role if n.origin else 'a source'} holds exactly its entries"
                       for n in new if n.source is not None]
        layers_out: list[dict[str, object]] = [
            {"name": n.spec.name + (f" (part {n.part} of {n.parts})" if n.parts > 1 else ""),
             "digest": n.written.digest, "diff_id": n.written.diff_id,
             "size": n.written.size, "entries": n.written.entries, "passed_through": n.source is not None}
            for n in new]
        if self.store is not None:
            stats.update(self.store.stats)
        # bytes fetched by Range requests (reads through layer indexes) are downloads too
        stats["range_bytes"] = sum(c.range_bytes for c in self.clients.values())
        stats["downloaded_bytes"] = stats.get("downloaded_bytes", 0) + stats["range_bytes"]
        if self.store is not None:
            if plan.memo is not None:
                remember(self.store, plan.memo, manifest_raw, media_type, config_desc.digest, layers_out,
                         plan.dockerfile, plan_lines)
                if libs is not None:
                    remember_report(self.store, plan.memo, libs)
            self.store.prune()
        return Result(
            output=sink.label, manifest_digest=sha256_digest(manifest_raw), config_digest=config_desc.digest,
            media_type=media_type, layers=layers_out, dockerfile=dockerfile, plan_lines=plan_lines, stats=stats,
            libs=libs, manifest_size=len(manifest_raw), platform=plan.base.image.config.platform,
            verify=(lambda: verify_output(sink, manifest_raw, config_raw, new, log, tagged=False))
            if opts.verify and not tag else None,
        )


def build_config(base: Base, recipe: Recipe, new: list[NewLayer], created: int) -> dict[str, Any]:
    """The base image's config with the recipe's changes, the new diff_ids and history."""
    cfg = copy.deepcopy(base.image.config.data)
    inner = cfg.setdefault("config", {}) or {}
    cfg["config"] = inner
    recipe.config.apply(inner)
    stamp = rfc3339(created)
    cfg["created"] = stamp
    cfg["rootfs"] = {"type": "layers", "diff_ids": [*base.diff_ids, *(n.written.diff_id for n in new)]}
    if base.history is None:
        cfg.pop("history", None)  # the base had no history aligned with its layers: add none
        return cfg
    history = list(base.history)
    for step in recipe.steps:
        entry: dict[str, Any] = {"created": stamp, "created_by": step.created_by, "comment": "ociassemble"}
        if step.layer is None:
            history.append({**entry, "empty_layer": True})
            continue
        for n in new:  # its layer, or the parts --max-layer-size cut it into
            if n.spec is step.layer:
                part = f" (part {n.part} of {n.parts})" if n.parts > 1 else ""
                history.append({**entry, "comment": f"ociassemble{part}"})
    cfg["history"] = history
    return cfg
