"""ociassemble: assemble OCI images from registry blobs without a container daemon.

The library API lives in :mod:`ociassemble.compose`; the ``ociassemble`` command is a thin
click front end over it (:mod:`ociassemble.cli`).
"""

__version__ = "0.1.0"
