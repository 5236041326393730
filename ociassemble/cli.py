"""The ``ociassemble`` command: parse flags, call the library, render the outcome.

No logic lives here. Errors raised on purpose arrive as :class:`OciAssembleError` and are
printed as one ``error:`` line with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ociassemble import __version__
from ociassemble.errors import OciAssembleError
from ociassemble.presets.compose import ComposeOptions, compose
from ociassemble.text import printable


def _fail(message: str, code: int = 1) -> None:
    """The one way an error leaves: one line, every character printable (the last line of
    defence against names from an image or a server that carry newlines or escapes)."""
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def _say(line: str, err: bool = True) -> None:
    """Any other line printed: escaped the same way."""
    click.echo(printable(line), err=err)


class OneLineCommand(click.Command):
    """Every command's boundary: an error raised on purpose, or one of the local file system
    (full, read-only, a file in the way), as one ``error:`` line; the place is named by the
    role the command's own options give it (``--store-dir``, ``--authfile``)."""

    def invoke(self, ctx: click.Context) -> object:
        from ociassemble.transport.oserrors import is_local, local_error

        try:
            return super().invoke(ctx)
        except OciAssembleError as e:
            _fail(str(e), e.exit_code)
        except OSError as e:
            if not is_local(e):
                raise
            places: dict[str, Path | str | None] = {"work": ctx.params.get("work_dir")}
            if "store_dir" in ctx.params:
                from ociassemble.transport.store import default_store_dir

                places["store-dir"] = ctx.params["store_dir"] or default_store_dir()
            if "authfile" in ctx.params:
                places["authfile"] = ctx.params["authfile"] or (e.filename if self.name == "login" else None)
            err = local_error(e, places)
            _fail(str(err), err.exit_code)
        return None


class OneLineErrors(click.Group):
    """Every command (the ``store`` group's too) with :class:`OneLineCommand`'s boundary;
    and click's own usage errors (an unknown option, a missing argument, a bad value), an
    abort and an interrupt as one ``error:`` line with a hint, at this one place for every
    command, instead of click's usage block."""

    command_class = OneLineCommand
    group_class = type  # ``store`` and its commands get the same boundaries

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as e:
            path = e.ctx.command_path if e.ctx is not None else "ociassemble"
            _fail(f"{e.format_message().rstrip('.')} (see '{path} --help')", 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.Abort:
            _fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ociassemble")
def main() -> None:
    """Assemble OCI images from registry blobs, with no container daemon."""


F = TypeVar("F", bound=Callable[..., Any])

# how the registries of a run are reached: every command that reads or writes images takes these
_REGISTRY = [
    click.option("--tls-verify", "tls_verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
                 help="Verify registry TLS certificates; --tls-verify=false as with skopeo."),
    click.option("--cert-dir", metavar="DIR",
                 help="CA (*.crt) and client certificates (*.cert + *.key) for the registries, instead of certs.d."),
    click.option("--creds", metavar="USER:PASSWORD", help="Credentials for the registries of this run."),
    click.option("--authfile", metavar="FILE", help="Auth file to read (docker config.json or containers auth.json)."),
    click.option("--timeout", type=float, metavar="SECONDS", help="Give up on a silent registry after this long."),
]

_SHARED = [
    click.option("--output-name", "output_name", default="tritonserver", show_default=True,
                 help="Destination: a registry reference, oci:PATH[:TAG], or a bare name (-> oci:./NAME:latest)."),
    click.option("--work-dir", default=".", show_default=True, help="Where Dockerfile.compose and scratch files go."),
    click.option("--platform", metavar="OS/ARCH[/VARIANT]",
                 help="Platform to take from multi-platform sources (default linux/amd64)."),
    click.option("--compression", default="gzip", show_default=True, metavar="gzip|zstd[:LEVEL]",
                 help="Compression of the new layers."),
    click.option("--jobs", type=click.IntRange(min=0), default=0,
                 help="Layers processed at once (default: by core count)."),
    *_REGISTRY,
    click.option("--store-dir", metavar="DIR",
                 help="Blob store and memo directory (default $XDG_CACHE_HOME/ociassemble)."),
    click.option("--no-store", is_flag=True, help="Use no local store: every run reads from the sources."),
    click.option("--store-max-size", default="50G", show_default=True, metavar="SIZE",
                 help="After a run, evict least recently used store blobs down to this size."),
    click.option("--verify", is_flag=True,
                 help="Read the result back from the destination and check every new layer against the sources."),
    click.option("--check-libs", "check_libs", type=click.Choice(["warn", "error", "off"]), default="warn",
                 show_default=True,
                 help="Check that the loader would find every shared library the new layers' ELF files need: warn "
                      "(per component, on stderr and in --json), error (fail before the tag is written, exit 3), off."),
    click.option("--max-layer-size", metavar="SIZE",
                 help="No new layer bigger than SIZE (e.g. 2G, for registries that refuse big layers): a bigger "
                      "one is written as several by whole files; reused layers above it are reported."),
    click.option("--split-reused", is_flag=True,
                 help="With --max-layer-size: rewrite carried layers above it as several (the same changeset)."),
    click.option("--index-from", metavar="REF",
                 help="Look for published layer indexes in REF's repository (default: each source image's own)."),
    click.option("--push-index", is_flag=True,
                 help="After the run, publish the layer indexes of the images read beside them (ociassemble index)."),
    click.option("--no-index", "no_index", is_flag=True, help="Do not look for published layer indexes."),
    click.option("-q", "--quiet", is_flag=True, help="Print only errors and the final digest."),
    click.option("-v", "--verbose", is_flag=True, help="Print each step."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]
_SHARED_NAMES = ("output_name", "work_dir", "platform", "compression", "jobs", "tls_verify", "cert_dir", "creds",
                 "authfile", "timeout", "store_dir", "no_store", "verify", "check_libs", "split_reused", "index_from",
                 "push_index")


def _shared(f: F) -> F:
    """The options every command that writes an image takes (the engine's RunOptions)."""
    for option in reversed(_SHARED):
        f = option(f)
    return f


def _run_options(kw: dict[str, Any]) -> dict[str, Any]:
    """The shared options as RunOptions fields; -q/-v/--json and the store size handled here."""
    if kw["quiet"] and kw["verbose"]:
        _fail("-q and -v cannot be used together", 2)
    verbose = kw["verbose"]

    def log(msg: str) -> None:
        if verbose:
            _say(msg)

    out = {name: kw[name] for name in _SHARED_NAMES}
    out.update(store_max_bytes=_size(kw["store_max_size"]), log=log, use_indexes=not kw["no_index"])
    if kw["max_layer_size"] is not None:
        cap = _size(kw["max_layer_size"])
        if cap < 64 << 10:
            _fail(f"--max-layer-size {kw['max_layer_size']} is too small: give at least 64K", 2)
        out["max_layer_size"] = cap
    elif kw["split_reused"]:
        _fail("--split-reused splits at --max-layer-size: give both", 2)
    return out


def _report(result: Any, kw: dict[str, Any], dockerfile: bool) -> None:
    quiet = kw["quiet"]
    if result.libs is not None and not quiet:  # lines built with repr-escaped names (libcheck.shown)
        for line in result.libs.warning_lines():
            click.echo(f"warning: {line}", err=True)
    if kw["as_json"]:
        click.echo(json.dumps({
            "output": result.output, "manifest_digest": result.manifest_digest,
            "config_digest": result.config_digest, "media_type": result.media_type,
            "layers": result.layers,
            "stats": result.stats, "dry_run": result.dry_run, "plan": result.plan_lines,
            "libs": result.libs.to_json() if result.libs is not None else None,
        }, indent=2))
        return
    if not quiet:
        for line in result.plan_lines:
            _say(line)
        if dockerfile:
            _say(f"Dockerfile.compose written to {result.dockerfile}")
    if not result.dry_run:
        if not quiet:
            s = result.stats
            click.echo(f"blobs: {s.get('uploaded', 0)} sent, {s.get('mounted', 0)} mounted, "
                       f"{s.get('skipped', 0)} already there", err=True)
            if "verified_blobs" in s:
                click.echo(f"verified: {s['verified_blobs']} blobs ({s['verified_bytes']} bytes) read back whole",
                           err=True)
            if "verified_layers" in s:
                click.echo(f"verified: {s['verified_layers']} layers present, new ones re-read "
                           f"({s['verified_bytes']} bytes) and equal to the sources", err=True)
        _say(f"{result.output}@{result.manifest_digest}" if "@" not in result.output else result.output, err=False)


def _live(kw: dict[str, Any], dry_run: bool = False) -> bool:
    return not (kw["quiet"] or kw["verbose"] or kw["as_json"] or dry_run)


@main.command("compose")
@click.option("--backend", "backends", multiple=True, metavar="NAME", help="Include this backend (repeatable).")
@click.option("--repoagent", "repoagents", multiple=True, metavar="NAME", help="Include this repository agent.")
@click.option("--cache", "caches", multiple=True, metavar="NAME", help="Include this cache implementation.")
@click.option("--container-version", metavar="YY.MM",
              help="Use nvcr.io/nvidia/tritonserver:<v>-py3 and -py3-min (overridden by --image).")
@click.option("--image", "images", multiple=True, metavar="NAME,REF",
              help="min,REF / full,REF / gpu-min,REF: the source images (docker:// or oci:).")
@click.option("--dry-run", is_flag=True, help="Move no data: print the plan and write Dockerfile.compose.")
@click.option("--enable-gpu/--no-enable-gpu", default=True, show_default=True,
              help="Compose a GPU image (or a CPU-only one).")
@click.option("--system-layers", type=click.Choice(["auto", "none"]), default="auto", show_default=True,
              help="Carry over the full image's system-dependency layers (compose.py's RUN steps).")
@click.option("--add", "adds", multiple=True, metavar="SRC:DEST",
              help="Local directory, file or tar file (extracted) copied to DEST as a layer of its own "
                   "(repeatable), like a COPY line appended to Dockerfile.compose.")
@click.option("--add-chown", metavar="UID[:GID]", help="Owner of the --add layers' entries (default 0:0).")
@click.option("--base", type=click.Choice(["auto", "min"]), default="auto", show_default=True,
              help="auto: when min is not the image full was built on (CPU-only), stand on full's own layers "
                   "below /opt/tritonserver; min: always keep min (then nothing full's build installed is carried).")
@_shared
def compose_cmd(backends: tuple[str, ...], repoagents: tuple[str, ...], caches: tuple[str, ...],
                container_version: str | None, images: tuple[str, ...], dry_run: bool, enable_gpu: bool,
                system_layers: str, base: str, adds: tuple[str, ...], add_chown: str | None, **kw: Any) -> None:
    """Compose a custom Triton server image, like compose.py but without Docker."""
    opts = ComposeOptions(
        backends=list(backends), repoagents=list(repoagents), caches=list(caches),
        container_version=container_version, images=list(images), dry_run=dry_run, enable_gpu=enable_gpu,
        system_layers=system_layers, base=base, adds=list(adds), add_chown=add_chown, **_run_options(kw),
    )
    result = _run(compose, opts, _live(kw, dry_run), "interrupted; nothing was tagged at the destination")
    _report(result, kw, dockerfile=True)


@main.command("build", epilog="The last stage is built. Its FROM image's layers are carried as they are; COPY "
              "--from copies from image stages (FROM REF AS NAME) and COPY/ADD from the context. RUN needs a "
              "container runtime: only the RUN lines compose.py writes itself are carried out.")
@click.argument("context", default=".", metavar="[CONTEXT]")
@click.option("-f", "--file", "dockerfile", metavar="FILE", help="The Dockerfile (default CONTEXT/Dockerfile).")
@click.option("-t", "--tag", "tag", metavar="REF", help="Destination, as docker build -t (same as --output-name).")
@click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
              help="Value of an ARG (repeatable; NAME alone takes it from the environment).")
@_shared
def build_cmd(context: str, dockerfile: str | None, tag: str | None, build_args: tuple[str, ...], **kw: Any) -> None:
    """Build a Dockerfile's last stage without a daemon (Dockerfile.compose and what users add to it)."""
    from ociassemble.presets.build import BuildOptions, build

    ctx = click.get_current_context()
    if tag is not None:
        if ctx.get_parameter_source("output_name") == click.core.ParameterSource.COMMANDLINE:
            _fail("-t and --output-name name the same thing: give one", 2)
        kw["output_name"] = tag
    opts = BuildOptions(dockerfile=dockerfile, context=context, build_args=list(build_args), **_run_options(kw))
    result = _run(build, opts, _live(kw), "interrupted; nothing was tagged at the destination")
    _report(result, kw, dockerfile=False)


@main.command("copy", epilog="Transports: [docker://]HOST/REPO[:TAG|@DIGEST], oci:PATH[:TAG], "
              "oci-archive:PATH[:TAG], docker-archive:PATH[:NAME:TAG]. Manifests keep their digests except through a "
              "docker archive, which keeps no manifest; layers are never recompressed.")
@click.argument("source")
@click.argument("destination")
@_shared
def copy_cmd(source: str, destination: str, **kw: Any) -> None:
    """Copy an image, or a whole index of platforms (unless --platform picks one), from SOURCE to DESTINATION."""
    from ociassemble.presets.copy import CopyOptions, copy

    ctx = click.get_current_context()
    if ctx.get_parameter_source("output_name") == click.core.ParameterSource.COMMANDLINE:
        _fail("copy takes its destination as an argument, not --output-name", 2)
    kw["output_name"] = destination
    opts = CopyOptions(source=source, **_run_options(kw))
    result = _run(copy, opts, _live(kw), "interrupted; nothing was tagged at the destination")
    _report(result, kw, dockerfile=False)


_READING = [
    click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Platform to take from a multi-platform image."),
    *_REGISTRY,
    click.option("--store-dir", metavar="DIR", help="Blob store (default $XDG_CACHE_HOME/ociassemble)."),
]


def _reading(f: F) -> F:
    """The options of a command that reads one image (ls, index)."""
    for option in reversed(_READING):
        f = option(f)
    return f


@main.command("ls")
@click.argument("ref")
@click.argument("path", default="/")
@_reading
@click.option("--no-store", is_flag=True, help="Use no local store: every layer's headers are read.")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def ls_cmd(ref: str, path: str, as_json: bool, **kw: Any) -> None:
    """List a directory of an image's merged filesystem (sizes of directories: everything below), reading
    no file body: from the store's layer indexes, or the layers' headers once."""
    from ociassemble.presets.ls import LsOptions, ls

    opts = LsOptions(ref=ref, path=path, work_dir=tempfile.gettempdir(), **kw)
    listing = _run(ls, opts, not as_json, "interrupted")
    if as_json:
        click.echo(json.dumps({"image": listing.image, "digest": listing.digest, "path": listing.path,
                               "layers_read": listing.layers_read,
                               "entries": [vars(e) for e in listing.entries]}, indent=2))
        return
    for e in listing.entries:
        suffix = f" -> {e.target}" if e.target else ("/" if e.kind == "dir" else "")
        _say(f"{e.kind:<8} {e.size:>14,} {e.name}{suffix}", err=False)


@main.command("index")
@click.argument("ref")
@click.option("--push", is_flag=True,
              help="Publish the indexes beside the image (an OCI artifact, subject: the image).")
@_reading
@click.option("-v", "--verbose", is_flag=True, help="Print each step.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def index_cmd(ref: str, push: bool, verbose: bool, as_json: bool, **kw: Any) -> None:
    """Index an image's layers (every entry's offset and body hash, gzip access points) so that a compose reads
    only what its selection needs; with --push, publish them beside the image."""
    from ociassemble.presets.index import IndexOptions, index

    def log(msg: str) -> None:
        if verbose:
            _say(msg)

    opts = IndexOptions(ref=ref, push=push, work_dir=tempfile.gettempdir(), log=log, **kw)
    result = _run(index, opts, not (as_json or verbose), "interrupted")
    if as_json:
        click.echo(json.dumps(vars(result), indent=2))
        return
    for layer in result.layers:
        _say(f"{layer['digest']}: {layer['entries']} entries, index {layer['index_bytes']} bytes, access points "
             f"{layer['points_bytes']} bytes")
    if result.artifact:
        _say(f"published: {result.artifact}", err=False)


@main.command("login")
@click.argument("server")
@click.option("-u", "--username", help="User name (NGC: $oauthtoken).")
@click.option("-p", "--password", help="Password; visible to other local users, prefer --password-stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--authfile", metavar="FILE", help="Write this file instead of the docker config.")
@click.option("--tls-verify", "tls_verify", type=click.BOOL, default=True, metavar="BOOL")
@click.option("--cert-dir", metavar="DIR")
def login_cmd(server: str, username: str | None, password: str | None, password_stdin: bool,
              authfile: str | None, tls_verify: bool, cert_dir: str | None) -> None:
    """Check credentials against SERVER and store them for later runs."""
    from ociassemble.transport.login import login
    from ociassemble.transport.registry.client import ClientOptions

    if password_stdin:
        if password:
            _fail("--password and --password-stdin cannot be used together", 2)
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("--password-stdin read no password: standard input was empty", 2)
    interactive = sys.stdin.isatty() and not password_stdin
    if not username:
        if not interactive:
            _fail("login needs -u USER (there is no terminal to ask on)", 2)
        username = click.prompt("Username")
    if not password:
        if not interactive:
            _fail("login needs a password: pass it on standard input with --password-stdin", 2)
        password = click.prompt("Password", hide_input=True)
    try:
        path = login(server, username or "", password or "", authfile,
                     ClientOptions(tls_verify=tls_verify, cert_dir=cert_dir))
    except OciAssembleError as e:
        _fail(str(e), e.exit_code)
        return
    _say(f"Login succeeded; credentials stored in {path}")


@main.command("check-libs", epilog="Exit status: 0 when every need is met, 3 when a shared library is missing or "
              "an ELF file cannot be read, 1 or 2 for other errors (unreachable image, bad options).")
@click.argument("ref")
@click.option("--path", "paths", multiple=True, metavar="PREFIX",
              help="Check the ELF files under this path (repeatable; default: /opt/tritonserver in a Triton image, "
                   "else the whole image). Their needs are looked up in the whole image.")
@click.option("--jobs", type=int, default=0, help="Layers read at once (default 2).")
@_reading
@click.option("--no-store", is_flag=True, help="Use no local store: every layer is read from the source.")
@click.option("--no-index", "no_index", is_flag=True,
              help="Do not use layer indexes (published beside the image, or eStargz TOCs): read layers whole.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the problems.")
@click.option("-v", "--verbose", is_flag=True, help="Print each step.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_libs_cmd(ref: str, platform: str | None, paths: tuple[str, ...], jobs: int, tls_verify: bool,
                   cert_dir: str | None, creds: str | None, authfile: str | None, timeout: float | None,
                   store_dir: str | None, no_store: bool, no_index: bool, quiet: bool, verbose: bool,
                   as_json: bool) -> None:
    """Check that the dynamic loader would find every shared library the ELF files of REF
    need (registry reference or oci:PATH[:TAG]); one line per missing library, per component."""
    from ociassemble.engine.libcheck import EXIT_MISSING
    from ociassemble.presets.checklibs import CheckOptions, check_image

    if quiet and verbose:
        _fail("-q and -v cannot be used together", 2)

    def log(msg: str) -> None:
        if verbose:
            click.echo(msg.encode("unicode_escape").decode("ascii") if not msg.isprintable() else msg, err=True)

    opts = CheckOptions(ref=ref, platform=platform, paths=list(paths), jobs=jobs, tls_verify=tls_verify,
                        cert_dir=cert_dir, creds=creds, authfile=authfile, timeout=timeout, store_dir=store_dir,
                        no_store=no_store, use_indexes=not no_index, log=log)
    report = _run(check_image, opts, not (quiet or verbose or as_json), "interrupted")
    if as_json:
        click.echo(json.dumps({"image": ref, **report.to_json()}, indent=2))
    else:
        for line in report.lines():
            click.echo(line)
        if not quiet:
            for note in report.notes:
                click.echo(f"note: {note}", err=True)
            click.echo(report.summary(), err=True)
    sys.exit(EXIT_MISSING if report.failed else 0)


_R = TypeVar("_R")


def _run(call: Callable[[Any], _R], opts: Any, show: bool, interrupted: str) -> _R:
    """Run a library call, with the live per-layer display when asked for and stderr is a
    terminal (never in CI); its errors become the one ``error:`` line."""
    try:
        if show and sys.stderr.isatty() and not os.environ.get("CI"):
            from ociassemble.progress import RichProgress

            with RichProgress() as progress:
                opts.progress = progress
                return call(opts)
        return call(opts)
    except OciAssembleError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail(interrupted, 130)
    raise AssertionError("unreachable: _fail exits")


def _size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):  # also NaN
        _fail(f"{text!r} is not a size; write it like 20G or 500M (0 or more)", 2)
    return int(value * units[unit])


@main.group("store")
def store_group() -> None:
    """The local blob store: what it holds, and trimming it."""


@store_group.command("info")
@click.option("--store-dir", metavar="DIR")
def store_info(store_dir: str | None) -> None:
    """Where the store is and how much it holds."""
    from ociassemble.transport.store import Store, default_store_dir

    root = Path(store_dir) if store_dir else default_store_dir()
    if not root.exists():  # asking must not create it
        _say(f"{root}: no store here yet (0 blobs, 0 bytes)", err=False)
        return
    st = Store(root)
    count, total = st.usage()
    click.echo(f"{root}: {count} blobs, {total} bytes; {len(list((root / 'index').iterdir()))} layer indexes, "
               f"{len(list((root / 'memo').iterdir()))} memos")
    stale = st.stale()
    if stale:
        click.echo(f"{len(stale)} partial files left by killed runs ({sum(n for _p, n in stale)} bytes); "
                   "'ociassemble store prune' removes them")


@store_group.command("prune")
@click.option("--store-dir", metavar="DIR")
@click.option("--max-size", default="0", show_default=True, help="Keep at most this much (e.g. 20G); 0 empties it.")
def store_prune(store_dir: str | None, max_size: str) -> None:
    """Evict least recently used blobs down to --max-size."""
    from ociassemble.transport.store import Store, default_store_dir

    root = Path(store_dir) if store_dir else default_store_dir()
    limit = _size(max_size)
    if not root.exists():
        _say(f"removed 0 blobs, 0 bytes (no store at {root})", err=False)
        return
    st = Store(root)
    stale = st.remove_stale()
    removed, freed = st.prune(limit)
    click.echo(f"removed {removed} blobs, {freed} bytes")
    if stale:
        click.echo(f"removed {len(stale)} partial files left by killed runs ({sum(n for _p, n in stale)} bytes)")
