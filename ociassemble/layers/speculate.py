"""Hashing a new layer's diff_id while its source layer streams.

A new gzip layer's compressed bytes are mostly the spool's gzip members, spliced in, but
its diff_id is the sha256 of the *uncompressed* tar stream, and sha256 cannot be put
together from pieces. Left alone, the writer inflates every member a second time to hash
it: 2.5 s of CPU for the benchmark's 2.3 GB of bodies, a fifth of a cold compose.

New layers list their entries in the order the source layers first wrote them (see
``materialise``), so a new layer usually begins with a long run of entries exactly as one
source layer streams them. While a layer streams, every entry one of the recipe's copies
takes is hashed, as the new layer will hold it, into a running sha256 per new layer, and
the hash's state is kept before each entry. When the layer is written, its entries are
compared with what was hashed; the state after the longest matching run is taken up and
only the rest is inflated again. A wrong guess (a later layer replaced a file, a symlink
led a copy elsewhere) costs only the inflate it failed to save: the diff_id is always the
hash of exactly the bytes written, and every one of them is compared or hashed.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import queue
import threading
from collections.abc import Callable
from typing import Any

from ociassemble.layers.spec import LayerSpec
from ociassemble.layers.spool import SMALL, Spool, tar_padding
from ociassemble.layers.tree import at_or_under
from ociassemble.layers.write import header_id, synthetic_entries, tar_header
from ociassemble.oci.changeset import FILE, HARDLINK, Entry

STATE_EVERY = 64  # entries between kept hash states (after big bodies, one is always kept)


class Recording:
    """The start of one new layer's uncompressed stream as one source layer gave it."""

    def __init__(self) -> None:
        self.headers: list[bytes] = []  # header_id of each entry
        self.bodies: list[str | None] = []
        self._hash = hashlib.sha256()
        self._size = 0
        # (entry index, bytes hashed, sha256) before entry 0, after every big body and every
        # STATE_EVERY entries: a state per entry cost ~0.3 KB of OpenSSL memory per file
        self.states: list[tuple[int, int, Any]] = [(0, 0, self._hash.copy())]
        self.stopped = False  # an entry could not be foretold: nothing after it is either

    def stop(self) -> None:
        self.stopped = True

    def add(self, header: bytes, body: str | None = None) -> None:
        self.open(header)
        self.close(header, body)

    def open(self, header: bytes) -> None:
        if not self.stopped:
            self._hash.update(header)
            self._size += len(header)

    def piece(self, data: bytes | memoryview) -> None:
        if not self.stopped:
            self._hash.update(data)
            self._size += len(data)

    def spooled(self, spool: Spool, body: str, size: int) -> None:
        """Hash a body already in the spool (a later layer's replacement); a body that
        cannot be read back ends the recording here (the writer then reads it itself)."""
        try:
            with spool.open(body) as f:
                left = size
                while left and not self.stopped:
                    data = f.read(min(1 << 20, left))
                    if not data:
                        break
                    self.piece(data)
                    left -= len(data)
        except OSError:
            left = -1
        if left:
            self.stop()

    def close(self, header: bytes, body: str | None, size: int = 0) -> None:
        if self.stopped:
            return
        pad = tar_padding(size)
        if pad:
            self._hash.update(bytes(pad))
            self._size += pad
        self.headers.append(header_id(header))
        self.bodies.append(body)
        if size > SMALL or len(self.headers) % STATE_EVERY == 0:
            self.states.append((len(self.headers), self._size, self._hash.copy()))

    def match(self, headers: list[bytes], bodies: list[str | None]) -> int:
        """How many leading entries of the written layer (``headers`` as ``header_id``
        gives them) are the ones hashed here."""
        n = min(len(headers), len(self.headers))
        k = 0
        while k < n and headers[k] == self.headers[k] and bodies[k] == self.bodies[k]:
            k += 1
        return k

    def floor(self, k: int) -> int:
        """The last entry index at or before ``k`` with a state kept: the writer hashes the
        few small entries between it and ``k`` itself (never a big body: one is kept after
        each of those)."""
        return self.states[bisect.bisect_right(self.states, k, key=lambda st: st[0]) - 1][0]

    def state(self, k: int) -> tuple[int, Any]:
        """(bytes hashed, a sha256 to go on with) before entry ``k``, which :meth:`floor` gave."""
        at = bisect.bisect_left(self.states, k, key=lambda st: st[0])
        index, size, h = self.states[at]
        assert index == k, "no state kept before this entry"
        return size, h.copy()


class _Tee:
    """A file body on its way to the spool, hashed into a recording as it passes."""

    def __init__(self, body: Any, watch: Watch):
        self._body = body
        self._watch = watch

    def read(self, n: int = -1) -> bytes | memoryview:
        data = self._body.read(n)
        self._watch.piece(data)
        return data


class Watch:
    """The entry being read from one source layer, as the new layer will hold it.

    ``over`` is a later layer's replacement for the same path, already read: the new layer
    holds that one, at this entry's place (its first appearance), so its header and body are
    hashed here instead, and the body streaming past goes to the spool unhashed."""

    def __init__(self, observer: Observer, rec: Recording, header: bytes, out: Entry, over: Entry | None = None):
        self._observer = observer
        self._rec = rec
        self._header = header
        self._out = out
        self._over = over
        observer.submit(rec.open, header)

    def tee(self, body: Any) -> Any:
        return body if self._over is not None else _Tee(body, self)

    def piece(self, data: bytes | memoryview) -> None:
        if data:
            self._observer.submit(self._rec.piece, data)

    def done(self, source: Entry) -> None:
        size = self._out.size if self._out.kind == FILE else 0
        if self._over is not None:
            body = self._over.content if self._over.kind == FILE else None
            if body is not None and size:
                self._observer.submit(self._rec.spooled, self._observer.spool, body, size)
        else:
            body = source.content if source.kind == FILE else None
        self._observer.submit(self._rec.close, self._header, body, size)


class Speculation:
    """Recordings for every (source layer, new layer) pair, filled while layers stream."""

    def __init__(self, specs: list[LayerSpec], mtime: int, clamp: int | None, spool: Spool,
                 image: str = "full"):
        self.spool = spool
        self.clamp = clamp
        # what the layers read so far write: path -> [(layer, entry, or None when deleted)]
        self._written: dict[str, list[tuple[int, Entry | None]]] = {}
        self._opaque: dict[str, list[int]] = {}
        self._routes = [(c.src.strip("/"), c.dest.strip("/"), s.name) for s in specs for c in s.copies
                        if c.image == image]
        self._opening = {s.name: [tar_header(o.entry) for o in synthetic_entries(s, mtime, clamp)] for s in specs}
        self._recordings: dict[tuple[int, str], Recording] = {}
        self._lock = threading.Lock()

    def recordings(self, spec_name: str) -> list[Recording]:
        return [r for (_, name), r in sorted(self._recordings.items()) if name == spec_name]

    def observer(self, layer: int) -> Observer:
        return Observer(self, layer)

    def layer_read(self, layer: int, entries: list[Entry]) -> None:
        """Remember a layer's entries: they may replace or delete those of layers below
        that are still streaming."""
        with self._lock:
            for e in entries:
                if not e.is_whiteout:
                    if self._bears_on(e.path):
                        self._written.setdefault(e.path, []).append((layer, e))
                    continue
                parent, name = e.whiteout()
                if name is None:
                    if self._bears_on(parent):
                        self._opaque.setdefault(parent, []).append(layer)
                else:
                    gone = f"{parent}/{name}" if parent else name
                    if self._bears_on(gone):
                        self._written.setdefault(gone, []).append((layer, None))

    def _bears_on(self, path: str) -> bool:
        """Only a copied path or one of its ancestors can change what :meth:`later` answers:
        the entries of unselected trees (a pip layer's 100,000 files) are not kept."""
        return any(at_or_under(path, src) or at_or_under(src, path)
                   for src, _dest, _name in self._routes)

    def later(self, layer: int, path: str) -> tuple[bool, Entry | None]:
        """(gone, replacement): whether a layer above ``layer`` read so far deletes ``path``
        (or hides it under an opaque directory), else its last replacement there."""
        with self._lock:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                anc = "/".join(parts[:depth])
                if any(i > layer and e is None for i, e in self._written.get(anc, ())):
                    return True, None
                if any(i > layer for i in self._opaque.get(anc, ())):
                    return True, None
            above = [(i, e) for i, e in self._written.get(path, ()) if i > layer]
        if any(e is None for _, e in above):
            return True, None  # deleted above: a path written again there is a new one, at the end
        if not above:
            return False, None
        return False, max(above, key=lambda ie: ie[0])[1]

    def route(self, path: str) -> tuple[str, str] | None:
        """(new layer, path in it) for a source path one copy takes; None if none or several do."""
        hits = [(name, dest if path == src else dest + path[len(src):]) for src, dest, name in self._routes
                if at_or_under(path, src)]
        return hits[0] if len(hits) == 1 else None

    def recording(self, layer: int, name: str) -> Recording:
        with self._lock:
            rec = self._recordings.get((layer, name))
            if rec is None:
                rec = self._recordings[(layer, name)] = Recording()
                for header in self._opening[name]:
                    rec.add(header)
            return rec


class Observer:
    """Called by the tar reader for each entry of one source layer.

    The hashing runs in a thread of its own, fed in order through a short queue: in the
    tar reader's thread it made that thread (which also compresses every body into the
    spool) the slowest stage of a big layer's read."""

    def __init__(self, spec: Speculation, layer: int):
        self._spec = spec
        self._layer = layer
        self._q: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue(maxsize=32)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __call__(self, e: Entry) -> Watch | None:
        if e.is_whiteout:
            return None  # whiteouts act below; the new layer's own come at its end
        route = self._spec.route(e.path)
        if route is None:
            return None
        name, dest = route
        rec = self._spec.recording(self._layer, name)
        gone, over = self._spec.later(self._layer, e.path)
        if gone:
            return None  # the new layer will not hold it
        if over is not None and (over.kind != e.kind or e.kind == HARDLINK):
            self.submit(rec.stop)  # a type change or a link: left to the writer
            return None
        out = dataclasses.replace(over or e, path=dest)
        clamp = self._spec.clamp
        if clamp is not None and out.mtime > clamp:
            out.mtime = clamp
        return Watch(self, rec, tar_header(out), out, over)

    @property
    def spool(self) -> Spool:
        return self._spec.spool

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        if self._error is None:
            self._q.put((fn, args))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self._error is None:
                try:
                    item[0](*item[1])
                except BaseException as e:  # reported by close()
                    self._error = e

    def close(self) -> None:
        """Wait until everything submitted is hashed."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
