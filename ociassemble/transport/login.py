"""``ociassemble login``: check a credential against the registry, then store it.

The check is the registry's own: ``GET /v2/`` answered through its challenge (basic, or a
token for no scope), so a wrong password is reported now rather than in the middle of a
compose. The entry is written like ``docker login`` writes it (see
:func:`ociassemble.transport.registry.credentials.store_login`).
"""

from __future__ import annotations

from pathlib import Path

from ociassemble.errors import UsageError
from ociassemble.oci.reference import parse_registry_ref
from ociassemble.transport.registry.auth import Credential
from ociassemble.transport.registry.client import ClientOptions
from ociassemble.transport.registry.credentials import store_login
from ociassemble.transport.source import registry_client


def login(server: str, username: str, password: str, authfile: str | None = None,
          options: ClientOptions | None = None) -> Path:
    if not username or not password:
        raise UsageError("login needs a username and a password (use --password-stdin in scripts)")
    ref = parse_registry_ref(server.removeprefix("https://").removeprefix("http://").rstrip("/") + "/x")
    cred = Credential(username, password)
    client = registry_client(ref, options=options, credential=cred)
    client.request("GET", "/v2/", (), what="login check").close()
    return store_login(ref.host, cred, authfile)
