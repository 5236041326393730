"""Exception types whose messages are written for the person at the terminal.

Every error raised on purpose by ociassemble derives from :class:`OciAssembleError`; the CLI
prints ``error: <message>`` for these and exits non-zero without a traceback, so each
message must say what is wrong *and* what to do about it.
"""


class OciAssembleError(Exception):
    """Base class: the message is a complete, user-actionable sentence."""

    exit_code = 1


class UsageError(OciAssembleError):
    """Flags or arguments that cannot work together."""

    exit_code = 2


class InvalidReference(OciAssembleError):
    """An image reference that does not parse."""

    exit_code = 2


class RegistryError(OciAssembleError):
    """The registry answered something we cannot use."""


class NotARegistry(RegistryError):
    """A server that does not answer as the OCI distribution API does (a web server that
    says 200 to everything, a proxy's login page): nothing it says can be trusted.
    Raised through :func:`ociassemble.transport.registry.client.not_a_registry`, which words it."""


class AuthError(RegistryError):
    """Credentials missing, rejected, or insufficient for the scope asked."""


class NotFound(RegistryError):
    """A manifest, tag or blob that does not exist."""


class DigestMismatch(OciAssembleError):
    """Content whose bytes do not hash to the digest (or size) that named it."""


class ManifestError(OciAssembleError):
    """A manifest, index or config that is malformed or of an unsupported kind."""


class UnsafeTarEntry(OciAssembleError):
    """A layer entry that would escape the root or write through a symlink."""


class SelectionError(OciAssembleError):
    """A requested component or path that the source image does not have."""
