"""``ociassemble index REF [--push]``: the layer indexes of an image, kept in the store and,
with ``--push``, published beside it for every machine that composes from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ociassemble.engine.indexes import make, push
from ociassemble.engine.run import RunOptions, Session, translating_os_errors
from ociassemble.errors import UsageError


@dataclass
class IndexOptions(RunOptions):
    ref: str = ""
    push: bool = False


@dataclass
class IndexResult:
    image: str
    digest: str
    layers: list[dict[str, object]] = field(default_factory=list)
    artifact: str = ""


def index(opts: IndexOptions) -> IndexResult:
    return translating_os_errors(lambda: _index(opts), opts)  # type: ignore[arg-type,return-value]


def _index(opts: IndexOptions) -> IndexResult:
    if opts.no_store:
        raise UsageError("layer indexes are made from the store's copies of the layers and kept there: drop "
                         "--no-store")
    with Session(opts) as s:
        assert s.store is not None
        image = s.resolve("image", s.source(opts.ref))
        made = make(s.store, image, s.log)
        result = IndexResult(image.name, image.digest, [
            {"digest": i.digest, "entries": len(i.entries), "points_bytes": len(i.points or b""),
             "index_bytes": len(i.to_json())} for i in made])
        if opts.push:
            result.artifact = push(image, made).digest
        return result


__all__ = ["IndexOptions", "IndexResult", "index"]
