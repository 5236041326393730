"""Compose memos: an unchanged re-run costs a few HEAD requests.

The key is everything the output depends on: the tool version, the source references and
the digests they name right now (one HEAD each), the selection and every option that
changes bytes. The value is the output manifest itself (exact bytes), so a hit can re-tag
a destination that lost only its tag, and the Dockerfile.compose text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from ociassemble import __version__
from ociassemble.transport.store import Store

MEMO_VERSION = 4  # 2: gzip layers multi-member (bodies spliced in); 3: entries in source order; 4: pass-through


def memo_key(parts: dict[str, Any]) -> str:
    doc = {"memo": MEMO_VERSION, "tool": __version__, **parts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def remember(store: Store, key: str, manifest_raw: bytes, media_type: str, config_digest: str,
             layers: list[dict[str, object]], dockerfile: str, plan_lines: list[str]) -> None:
    store.put_memo(key, {
        "manifest": base64.b64encode(manifest_raw).decode(), "media_type": media_type,
        "config_digest": config_digest, "layers": layers, "dockerfile": dockerfile, "plan": plan_lines,
    })


def recall(store: Store, key: str) -> dict[str, Any] | None:
    value = store.memo(key)
    if not value or "manifest" not in value:
        return None
    try:
        value["manifest_raw"] = base64.b64decode(value["manifest"])
    except ValueError:
        return None
    return value
