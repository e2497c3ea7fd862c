"""API keys: hashed at rest in a JSON file, presented as ``Authorization: Bearer <token>``.

A token is ``rml_<key_id>_<secret>`` with 256 bits of randomness in the secret. Only the
sha256 of the whole token is stored (a slow password hash buys nothing for a random token);
the key id finds the record, :func:`hmac.compare_digest` compares the digests. The file is
written atomically with mode 0600 under an advisory lock, and re-read by the server when it
changes, so a revocation takes effect without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..filelock import exclusive_lock

SCOPES: frozenset[str] = frozenset({"predict", "admin"})
TOKEN_PREFIX = "rml"
_FORMAT_VERSION = 1


class ApiKeyError(ValueError):
    """Bad key-file content or a request for an unknown key or scope."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    token_sha256: str = field(repr=False)
    revoked: bool = False
    revoked_at: str | None = None

    def __str__(self) -> str:
        state = f"revoked {self.revoked_at}" if self.revoked else "active"
        return f"{self.key_id}  {self.name}  {','.join(self.scopes)}  {self.created_at}  {state}"

    def public(self) -> dict[str, Any]:
        """Everything but the digest (for listings)."""
        data = asdict(self)
        del data["token_sha256"]
        data["scopes"] = list(self.scopes)
        return data


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _parse_token(token: str) -> str | None:
    """The key id of a well-formed token, else ``None``."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or len(parts[2]) < 32:
        return None
    return parts[1]


# -- the key file --------------------------------------------------------------------------
def _decode(raw: str, path: Path) -> dict[str, ApiKey]:
    try:
        doc = json.loads(raw)
        return {k["key_id"]: ApiKey(**{**k, "scopes": tuple(k["scopes"])}) for k in doc["keys"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiKeyError(f"API key file {path} is not valid: {exc}") from exc


def read_keys(path: Path) -> dict[str, ApiKey]:
    """All keys in the file by key id (empty when the file does not exist)."""
    try:
        raw = Path(path).read_text()
    except FileNotFoundError:
        return {}
    return _decode(raw, Path(path))


def _write_keys(path: Path, keys: Iterable[ApiKey]) -> None:
    doc = {"version": _FORMAT_VERSION, "keys": [asdict(k) for k in keys]}
    for k in doc["keys"]:
        k["scopes"] = list(k["scopes"])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise read-modify-write of the key file between processes."""
    return exclusive_lock(path.with_name(path.name + ".lock"))


def create_key(path: Path | str, name: str, scopes: Iterable[str] = ("predict",)) -> str:
    """Add a key and return its plaintext token: shown once, never stored."""
    path = Path(path)
    scopes = tuple(sorted(set(scopes)))
    unknown = sorted(set(scopes) - SCOPES)
    if unknown or not scopes:
        raise ApiKeyError(f"scopes must be a non-empty subset of {sorted(SCOPES)}, got {unknown}")
    if not name.strip():
        raise ApiKeyError("an API key needs a name")
    with _locked(path):
        keys = read_keys(path)
        key_id = secrets.token_hex(6)
        while key_id in keys:
            key_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        keys[key_id] = ApiKey(
            key_id=key_id,
            name=name.strip(),
            scopes=scopes,
            created_at=_now(),
            token_sha256=_digest(token),
        )
        _write_keys(path, keys.values())
    return token


def revoke_key(path: Path | str, key_id: str) -> ApiKey:
    """Mark a key revoked (it stays listed); unknown ids raise :class:`ApiKeyError`."""
    path = Path(path)
    with _locked(path):
        keys = read_keys(path)
        if key_id not in keys:
            raise ApiKeyError(f"no API key with id {key_id!r} in {path}")
        old = keys[key_id]
        keys[key_id] = ApiKey(**{**asdict(old), "revoked": True, "revoked_at": _now()})
        _write_keys(path, keys.values())
    return keys[key_id]


def list_keys(path: Path | str) -> list[ApiKey]:
    return sorted(read_keys(Path(path)).values(), key=lambda k: k.created_at)


class KeyStore:
    """Verifies tokens against the key file, re-reading it when its mtime or size changes.

    The file is checked at most every ``recheck_s`` seconds (a ``stat``), so a new or
    revoked key takes effect within that time without a restart.
    """

    def __init__(self, path: Path | str, *, recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        self._keys: dict[str, ApiKey] = {}

    def _current(self) -> dict[str, ApiKey]:
        now = time.monotonic()
        if now - self._checked < self.recheck_s:
            return self._keys
        self._checked = now
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._keys = read_keys(self.path)
                        self._stamp = stamp
                    except (ApiKeyError, OSError):
                        # A corrupt file fails closed: no key is valid until it is fixed.
                        self._keys, self._stamp = {}, None
        return self._keys

    def verify(self, token: str) -> ApiKey | None:
        """The active key matching ``token``, or ``None``."""
        key_id = _parse_token(token)
        key = self._current().get(key_id) if key_id else None
        # Compare even when the id is unknown so timing does not depend on the lookup.
        expected = key.token_sha256 if key else "0" * 64
        match = hmac.compare_digest(expected, _digest(token))
        if key is None or not match or key.revoked:
            return None
        return key

    def __len__(self) -> int:
        return sum(not k.revoked for k in self._current().values())


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token
