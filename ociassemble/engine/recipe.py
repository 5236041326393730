"""What to build, independent of where the bytes come from: the engine's input.

A :class:`Recipe` lists the new layers (:mod:`ociassemble.layers.spec`: which trees of
which named source become which layer) and the config changes. Front ends (the Triton
preset, the Dockerfile builder) produce recipes; :mod:`ociassemble.engine.assemble`
carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ociassemble.layers.spec import LayerSpec


@dataclass
class Recipe:
    layers: list[LayerSpec]
    env: list[tuple[str, str]]  # applied in order, with ${VAR} expansion like Dockerfile ENV
    labels: dict[str, str]
    entrypoint: list[str] | None = None
    dockerfile: str = ""

    def wanted_prefixes(self, image: str) -> list[str]:
        return sorted({c.src.strip("/") for spec in self.layers for c in spec.copies if c.image == image})
