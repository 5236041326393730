"""What to build, independent of where the bytes come from: the engine's input.

A :class:`Recipe` is the final stage of a Dockerfile as the engine carries it out: its
steps in order, each adding a layer (:class:`~ociassemble.layers.spec.LayerSpec`: which
trees of which named source it copies) or changing only the config, and the config
changes themselves with every word already processed. Front ends (the Triton preset, the
Dockerfile builder) produce recipes; :mod:`ociassemble.engine.run` carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ociassemble.layers.spec import LayerSpec


@dataclass
class ConfigChanges:
    """Dockerfile's config instructions, applied in the order they were given."""

    env: list[tuple[str, str]] = field(default_factory=list)  # values final (substituted)
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    exposed: list[str] = field(default_factory=list)  # "80/tcp"

    def apply(self, inner: dict[str, Any]) -> None:
        """Onto an image config's ``config`` object, as Docker's builder does (an ENTRYPOINT
        given without a CMD resets the base image's CMD)."""
        if self.env:
            inner["Env"] = set_env(list(inner.get("Env") or []), self.env)
        if self.labels:
            inner["Labels"] = {**(inner.get("Labels") or {}), **self.labels}
        if self.workdir is not None:
            inner["WorkingDir"] = self.workdir
        if self.user is not None:
            inner["User"] = self.user
        if self.entrypoint is not None:
            inner["Entrypoint"] = list(self.entrypoint)
            if self.cmd is None:
                inner.pop("Cmd", None)
        if self.cmd is not None:
            inner["Cmd"] = list(self.cmd)
        if self.exposed:
            inner["ExposedPorts"] = {**(inner.get("ExposedPorts") or {}), **{p: {} for p in self.exposed}}


def set_env(base: list[str], updates: list[tuple[str, str]]) -> list[str]:
    """``KEY=VALUE`` items with ``updates`` set in order (a key keeps its first place)."""
    env: dict[str, str] = {}
    for item in base:
        k, _, v = item.partition("=")
        env.setdefault(k, v)
        env[k] = v
    for k, v in updates:
        env[k] = v
    return [f"{k}={v}" for k, v in env.items()]


def env_dict(items: list[str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in items)


@dataclass
class Step:
    """One instruction of the final stage: the image history records ``created_by``."""

    created_by: str
    layer: LayerSpec | None = None  # None: it changes the config only (an empty_layer entry)


@dataclass
class Recipe:
    steps: list[Step]
    config: ConfigChanges

    @property
    def layers(self) -> list[LayerSpec]:
        return [s.layer for s in self.steps if s.layer is not None]
