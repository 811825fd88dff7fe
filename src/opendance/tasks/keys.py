"""API keys: `od_<id>_<secret><checksum>`, GitHub-token style.

The prefix lets secret scanners find leaked keys, the checksum rejects look-alikes without a
database hit, and only a SHA-256 of the secret is stored (the secret is random, 190 bits, so a
fast hash is enough). Lookup is by the public id; the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib
from dataclasses import dataclass

PREFIX = "od"
_ALNUM = string.ascii_letters + string.digits
_ID_CHARS = string.ascii_lowercase + string.digits
_PATTERN = re.compile(r"^od_([a-z0-9]{8})_([A-Za-z0-9]{32})([A-Za-z0-9]{6})$")


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        out.append(_ALNUM[rem])
    return "".join(reversed(out))


def _checksum(key_id: str, secret: str) -> str:
    return _base62(zlib.crc32(f"{PREFIX}_{key_id}_{secret}".encode()), 6)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"{PREFIX}_{self.key_id}_{self.secret}{_checksum(self.key_id, self.secret)}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def generate() -> NewKey:
    key_id = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
    secret = "".join(secrets.choice(_ALNUM) for _ in range(32))
    return NewKey(key_id, secret)


def parse(token: str) -> tuple[str, str] | None:
    """Split a token into (id, secret) if it is well formed and its checksum holds."""
    match = _PATTERN.match(token)
    if match is None:
        return None
    key_id, secret, checksum = match.groups()
    if not hmac.compare_digest(checksum, _checksum(key_id, secret)):
        return None
    return key_id, secret


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
