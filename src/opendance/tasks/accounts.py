"""API keys and balances: create (shown once), authenticate, list, revoke, grant credits."""

from __future__ import annotations

import builtins
import hashlib
from dataclasses import dataclass

from sqlalchemy import func, select, update

from opendance.callbacks import signing
from opendance.clock import Clock
from opendance.store.changes import ChangeCounter
from opendance.store.db import Database
from opendance.store.tables import ApiKey
from opendance.tasks import keys, ledger
from opendance.tasks.errors import KeyNotFound
from opendance.tasks.models import KeyInfo


@dataclass(frozen=True)
class KeySummary:
    id: str
    name: str | None
    group: str
    balance: int
    last4: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class CreatedKey:
    """A new key. `token` is the only time the full secret exists outside the client."""

    token: str
    summary: KeySummary


class Accounts:
    """Keys and balances. Authenticated keys are cached while no key changed anywhere.

    `key_changes` moves whenever any key is revoked or changes group or secret, in any process
    (see `opendance.store.changes`); a cached key is used only while it has not moved since the
    key was read, so a revocation applies to the very next request everywhere. Without a
    counter nothing is cached. Balances are never cached: the create reserves credits in its
    own transaction, which also refuses a revoked key.
    """

    _CACHE_MAX = 10_000

    def __init__(
        self, db: Database, clock: Clock | None = None, key_changes: ChangeCounter | None = None
    ) -> None:
        self.db = db
        self.clock = clock or Clock()
        self.key_changes = key_changes
        self._cache: dict[str, tuple[int, KeyInfo]] = {}

    @staticmethod
    def _cache_key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def cached(self, token: str) -> KeyInfo | None:
        """The key for a token seen before, if no key changed since; no database query."""
        hit = self._cache.get(self._cache_key(token))
        if hit is None or self.key_changes is None or self.key_changes.current() != hit[0]:
            return None
        return hit[1]

    def create_key(
        self, *, credits: int, group: str = "default", name: str | None = None
    ) -> CreatedKey:
        new = keys.generate()
        now = self.clock.now()
        with self.db.write() as session:
            session.add(
                ApiKey(
                    id=new.key_id,
                    name=name,
                    secret_hash=new.secret_hash,
                    last4=new.token[-4:],
                    user_group=group,
                    balance=0,
                    created_at=now,
                    webhook_secret=signing.new_secret(),
                )
            )
            session.flush()
            if credits:
                ledger.grant(session, new.key_id, credits, now, note="initial credits")
        return CreatedKey(token=new.token, summary=self.get(new.key_id))

    def authenticate(self, token: str) -> KeyInfo | None:
        """The key for a bearer token, or None if malformed, unknown, wrong or revoked."""
        parsed = keys.parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        # Read before the row: a change committed in between makes this entry stale at once.
        epoch = self.key_changes.current() if self.key_changes is not None else None
        with self.db.read() as session:
            row = session.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None:
                return None
            if not keys.matches(secret, row.secret_hash):
                return None
            info = KeyInfo(id=row.id, group=row.user_group, name=row.name)
        if epoch is not None:
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[self._cache_key(token)] = (epoch, info)
        return info

    def get(self, key_id: str) -> KeySummary:
        with self.db.read() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise KeyNotFound(f"No API key with id {key_id}.")
            return _summary(row)

    def list(self) -> list[KeySummary]:
        with self.db.read() as session:
            rows = session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars()
            return [_summary(row) for row in rows]

    def count(self) -> int:
        with self.db.read() as session:
            return int(session.execute(select(func.count()).select_from(ApiKey)).scalar_one())

    def revoke(self, key_id: str) -> KeySummary:
        """Revoke a key: the next request with it fails, in every process (a trigger tells)."""
        with self.db.write() as session:
            result = session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            if result.rowcount == 0 and session.get(ApiKey, key_id) is None:  # type: ignore[attr-defined]
                raise KeyNotFound(f"No API key with id {key_id}.")
        return self.get(key_id)

    def close(self) -> None:
        if self.key_changes is not None:
            self.key_changes.close()

    def webhook_secret(self, key_id: str) -> tuple[str, str | None]:
        """The key's current signing secret (made on first use) and the previous one in grace."""
        with self.db.write() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise KeyNotFound(f"No API key with id {key_id}.")
            if row.webhook_secret is None:
                row.webhook_secret = signing.new_secret()
            previous = None
            if (
                row.webhook_secret_previous
                and row.webhook_secret_rotated_at is not None
                and self.clock.now() - row.webhook_secret_rotated_at
                < signing.ROTATION_GRACE_SECONDS
            ):
                previous = row.webhook_secret_previous
            return row.webhook_secret, previous

    def rotate_webhook_secret(self, key_id: str) -> str:
        """A new signing secret; the old one keeps signing for the grace period."""
        with self.db.write() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise KeyNotFound(f"No API key with id {key_id}.")
            row.webhook_secret_previous = row.webhook_secret
            row.webhook_secret_rotated_at = self.clock.now()
            row.webhook_secret = signing.new_secret()
            return row.webhook_secret

    def set_group(self, key_id: str, group: str) -> KeySummary:
        """Move a key to another price group; its next create is priced in it."""
        with self.db.write() as session:
            result = session.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(user_group=group)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise KeyNotFound(f"No API key with id {key_id}.")
        return self.get(key_id)

    def ledger_page(
        self,
        key_id: str,
        *,
        limit: int = 20,
        after: int | None = None,
        newest_first: bool = True,
        task_id: str | None = None,
    ) -> tuple[builtins.list[ledger.Entry], bool, int]:
        """A page of the key's ledger entries (see `ledger.entries`), whether more follow, and
        the balance, read in the same transaction."""
        with self.db.read() as session:
            page, has_more = ledger.entries(
                session,
                key_id,
                limit=limit,
                after=after,
                newest_first=newest_first,
                task_id=task_id,
            )
            balance = session.execute(
                select(ApiKey.balance).where(ApiKey.id == key_id)
            ).scalar_one()
            return page, has_more, int(balance)

    def grant(self, key_id: str, credits: int, note: str | None = None) -> int:
        with self.db.write() as session:
            return ledger.grant(session, key_id, credits, self.clock.now(), note=note)


def _summary(row: ApiKey) -> KeySummary:
    return KeySummary(
        id=row.id,
        name=row.name,
        group=row.user_group,
        balance=row.balance,
        last4=row.last4,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
