"""Which transport a reference names, and what the engine may ask of it before opening it.

The one place that maps reference kinds to Source and Sink classes (registry, OCI layout,
oci-archive, docker-archive): the engine and the commands ask here, never test types.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ociassemble.oci.reference import ArchiveRef, ImageRef, LayoutRef, RegistryRef
from ociassemble.transport.archive import ArchiveSink, check_archive_target, open_archive_source
from ociassemble.transport.registry.client import ClientOptions, RegistryClient
from ociassemble.transport.registry.credentials import CredentialOptions
from ociassemble.transport.sink import LayoutSink, RegistrySink, Sink, check_layout_target
from ociassemble.transport.source import Clients, LayoutSource, RegistrySource, Source, registry_client


def open_source(ref: ImageRef, *, options: ClientOptions | None = None, creds: CredentialOptions | None = None,
                clients: Clients | None = None) -> Source:
    if isinstance(ref, LayoutRef):
        return LayoutSource(ref)
    if isinstance(ref, ArchiveRef):
        return open_archive_source(ref)
    return RegistrySource(ref, registry_client(ref, options=options, creds=creds, clients=clients))


# -- what the engine asks of a destination, by its reference, before any sink is opened (a
#    layout sink creates its directory) ------------------------------------------------------

def local_path(ref: ImageRef) -> Path | None:
    """The directory or file a destination writes on this machine (None for a registry)."""
    return None if isinstance(ref, RegistryRef) else Path(ref.path)


def accepts_docker(ref: ImageRef) -> bool:
    """Whether Docker schema 2 media types may be written there (an OCI layout or archive
    is always OCI, as skopeo writes them; a docker archive is Docker's)."""
    return isinstance(ref, RegistryRef) or (isinstance(ref, ArchiveRef) and ref.kind == "docker-archive")


def accepts_index(ref: ImageRef) -> bool:
    """Whether an index of platforms can be written there (a docker archive holds one image)."""
    return not (isinstance(ref, ArchiveRef) and ref.kind == "docker-archive")


def destination_exists(ref: ImageRef) -> bool:
    """A layout that does not exist yet holds nothing (asking it would create it)."""
    if isinstance(ref, LayoutRef):
        return (Path(ref.path) / "index.json").is_file()
    if isinstance(ref, ArchiveRef):
        return Path(ref.path).is_file()
    return True


def open_sink(ref: ImageRef, client: Callable[[RegistryRef], RegistryClient]) -> Sink:
    if isinstance(ref, LayoutRef):
        return LayoutSink(ref)
    if isinstance(ref, ArchiveRef):
        return ArchiveSink(ref)
    return RegistrySink(ref, client(ref))


def check_destination(ref: ImageRef, client: Callable[[RegistryRef], RegistryClient]) -> None:
    """Fail before any layer work when the destination cannot be written: wrong push
    credentials, a file in the way, a read-only file system."""
    if isinstance(ref, LayoutRef):
        check_layout_target(Path(ref.path))
    elif isinstance(ref, ArchiveRef):
        check_archive_target(Path(ref.path))
    else:
        RegistrySink(ref, client(ref)).check_access()
