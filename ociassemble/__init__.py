"""ociassemble: assemble OCI images from registry blobs without a container daemon.

The public library API is what ``__all__`` names; the ``ociassemble`` command is a thin
click front end over it (:mod:`ociassemble.cli`). Names are imported on first use, so that
``import ociassemble`` (and the command's start-up) does not load the whole engine.

    from ociassemble import BuildOptions, ComposeOptions, build, compose
    compose(ComposeOptions(backends=["python"], images=["min,REF", "full,REF"], dry_run=True))
    result = build(BuildOptions(dockerfile="Dockerfile.compose", output_name="oci:/tmp/out:python"))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "compose": "ociassemble.presets.compose",
    "ComposeOptions": "ociassemble.presets.compose",
    "ComposeResult": "ociassemble.presets.compose",
    "build": "ociassemble.presets.build",
    "BuildOptions": "ociassemble.presets.build",
    "Result": "ociassemble.engine.run",
    "RunOptions": "ociassemble.engine.run",
    "check_image": "ociassemble.presets.checklibs",
    "CheckOptions": "ociassemble.presets.checklibs",
    "LibReport": "ociassemble.engine.libcheck",
    "login": "ociassemble.transport.login",
    "OciAssembleError": "ociassemble.errors",
    "UsageError": "ociassemble.errors",
    "InvalidReference": "ociassemble.errors",
    "RegistryError": "ociassemble.errors",
    "AuthError": "ociassemble.errors",
    "NotFound": "ociassemble.errors",
    "DigestMismatch": "ociassemble.errors",
    "ManifestError": "ociassemble.errors",
    "UnsafeTarEntry": "ociassemble.errors",
    "SelectionError": "ociassemble.errors",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ociassemble' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
