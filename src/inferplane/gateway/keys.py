"""API keys: generation, the hashed keys file, and the store the gateway reloads when it changes.

A key is `ip-` followed by 32 random bytes (urlsafe base64). Only its SHA-256 is stored. A salt or
a slow hash (bcrypt, argon2) protects low-entropy passwords against guessing; a 256-bit random key
cannot be guessed, so a plain SHA-256 is as strong and costs ~1 microsecond per request.

The keys file is JSON (`{"version": 1, "keys": [...]}`), written by `inferplane keys` and mounted
into the pod from a Kubernetes Secret. Kubernetes updates a Secret volume by swapping a symlink,
so the store watches the resolved file's inode and mtime, not only the path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

KEY_PREFIX = "ip-"
KEY_RANDOM_BYTES = 32
KEYS_FILE_VERSION = 1
RELOAD_INTERVAL_SECONDS = 1.0  # how often the gateway checks the keys file for changes

log = logging.getLogger("inferplane.gateway.keys")


class KeyEntry(BaseModel):
    """One key as stored: everything about it except the key itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^key_[A-Za-z0-9]{4,64}$", description="public id, used in metrics")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    tenant: str = Field(min_length=1, max_length=128)
    name: str = ""
    created_at: datetime
    expires_at: datetime | None = None
    models: list[str] = Field(default_factory=list, description="served names; empty = all")
    rpm: int | None = Field(None, gt=0, description="requests per minute")
    tpm: int | None = Field(None, gt=0, description="tokens (prompt + completion) per minute")
    monthly_budget: Decimal | None = Field(None, ge=0, description="in the gateway's currency")
    reasoning_default: bool | None = Field(None, description="reasoning when a request omits it")
    revoked: bool = False


class KeysFile(BaseModel):
    """The whole keys file."""

    model_config = ConfigDict(extra="forbid")

    version: int = KEYS_FILE_VERSION
    keys: list[KeyEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class ApiKey:
    """A key as the hot path sees it (timestamps pre-converted to epoch seconds)."""

    entry: KeyEntry
    expires_at_epoch: float | None
    allowed_models: frozenset[str]

    @property
    def key_id(self) -> str:
        return self.entry.id

    @property
    def tenant(self) -> str:
        return self.entry.tenant

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


def generate_key() -> str:
    """A new random key; shown once, never stored."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key (unsalted on purpose: see the module docstring)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def load_keys_file(path: str | Path) -> KeysFile:
    """Parse and validate a keys file; a missing file is an empty one."""
    path = Path(path)
    if not path.exists():
        return KeysFile()
    data = json.loads(path.read_text(encoding="utf-8"))
    keys_file = KeysFile.model_validate(data)
    if keys_file.version != KEYS_FILE_VERSION:
        raise ValueError(f"{path}: keys file version {keys_file.version} is not supported "
                         f"(expected {KEYS_FILE_VERSION})")
    ids = [entry.id for entry in keys_file.keys]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: duplicate key ids")
    return keys_file


def save_keys_file(path: str | Path, keys_file: KeysFile) -> None:
    """Write atomically (temp file + rename) with mode 0600, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(keys_file.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(keys_file: KeysFile | None = None, *, tenant: str, name: str = "",
               models: list[str] | None = None, rpm: int | None = None, tpm: int | None = None,
               budget: Decimal | str | None = None, expires_at: datetime | None = None,
               reasoning_default: bool | None = None,
               key: str | None = None) -> tuple[str, KeyEntry]:
    """A new key: returns (plaintext key, entry) and appends the entry to `keys_file` if given.

    `budget` is the monthly budget in the gateway's currency. The plaintext is not kept.
    """
    plaintext = key or generate_key()
    entry = KeyEntry(
        id=new_key_id(), sha256=hash_key(plaintext), tenant=tenant, name=name,
        created_at=datetime.now(timezone.utc).replace(microsecond=0), expires_at=expires_at,
        models=list(models or []), rpm=rpm, tpm=tpm,
        monthly_budget=None if budget is None else Decimal(budget),
        reasoning_default=reasoning_default,
    )
    if keys_file is not None:
        keys_file.keys.append(entry)
    return plaintext, entry


def revoke_key(keys_file: KeysFile, key_id: str) -> KeyEntry:
    """Mark a key revoked (kept in the file so that its id stays known in reports)."""
    for index, entry in enumerate(keys_file.keys):
        if entry.id == key_id:
            revoked = entry.model_copy(update={"revoked": True})
            keys_file.keys[index] = revoked
            return revoked
    raise KeyError(f"no key with id {key_id!r}; see `inferplane keys list`")


_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def parse_expiry(value: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, an ISO date (its midnight, UTC) or an ISO datetime."""
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"d": timedelta(days=amount), "h": timedelta(hours=amount),
                 "m": timedelta(minutes=amount)}[unit]
        return (now + delta).replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--expires {value!r}: use e.g. 30d, 12h, 2026-12-31 or "
                         "2026-12-31T18:00:00+01:00") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    # stat() follows the symlinks Kubernetes swaps, so a Secret update changes the inode.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


class KeyStore:
    """The keys the gateway accepts, by hash; reloads the file when it changes.

    A file that fails to parse is logged and ignored: the last good set of keys stays in force,
    so a bad edit cannot lock every client out (nor let anyone in).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._by_hash: dict[str, ApiKey] = {}
        self._identity: tuple[int, int, int, int] | None = None
        self.loaded = False
        self.reload_failures = 0
        self.on_reload: list = []  # callbacks(list[ApiKey]) run after each successful load

    def __len__(self) -> int:
        return len(self._by_hash)

    def keys(self) -> list[ApiKey]:
        return list(self._by_hash.values())

    def reload_if_changed(self) -> bool:
        """Load the file if its identity changed since the last load; True if keys were loaded."""
        identity = _file_identity(self.path)
        if identity is None:
            if self.loaded:
                log.warning("keys file %s disappeared; keeping the %d keys loaded before",
                            self.path, len(self._by_hash))
            return False
        if identity == self._identity:
            return False
        try:
            keys_file = load_keys_file(self.path)
        except (OSError, ValueError, ValidationError) as error:
            self.reload_failures += 1
            self._identity = identity  # do not retry the same bad file every second
            log.error("keys file %s is invalid, keeping the previous keys: %s", self.path,
                      str(error).splitlines()[0])
            return False
        self._install(keys_file)
        self._identity = identity
        return True

    def _install(self, keys_file: KeysFile) -> None:
        by_hash: dict[str, ApiKey] = {}
        for entry in keys_file.keys:
            by_hash[entry.sha256] = ApiKey(
                entry=entry,
                expires_at_epoch=entry.expires_at.timestamp() if entry.expires_at else None,
                allowed_models=frozenset(entry.models),
            )
        self._by_hash = by_hash
        if not self.loaded:
            log.info("loaded %d keys from %s", len(by_hash), self.path)
        else:
            log.info("reloaded %d keys from %s", len(by_hash), self.path)
        self.loaded = True
        for callback in self.on_reload:
            callback(list(by_hash.values()))

    def lookup(self, key: str) -> ApiKey | None:
        """The stored key whose hash matches `key`, or None."""
        digest = hash_key(key)
        found = self._by_hash.get(digest)
        # The dict lookup already matched; the constant-time compare keeps the check explicit
        # and independent of how the mapping compares strings.
        if found is not None and hmac.compare_digest(found.entry.sha256, digest):
            return found
        return None
