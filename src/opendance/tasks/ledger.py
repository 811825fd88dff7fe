"""The credit ledger: reserve at creation, then settle or refund exactly once.

Every function here runs inside the caller's write transaction, so a movement is committed
together with the task change that causes it. The unique (task_id, kind) constraint makes a
second settle or refund of one task impossible, whatever crashes or races happen; the balance
update is conditional (`balance >= amount`), so concurrent creates can never overdraw.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from opendance.store.tables import ApiKey, LedgerEntry
from opendance.tasks.errors import InsufficientCredits, KeyNotFound, KeyRevoked

GRANT = "grant"
RESERVE = "reserve"
SETTLE = "settle"
REFUND = "refund"

#: Ledger functions run in the caller's transaction: an ORM session, or a Core connection on
#: the create path (which skips the ORM's unit of work).
Transaction = Session | Connection

_INSERT_ENTRY = insert(LedgerEntry)


def _entry(
    session: Transaction,
    key_id: str,
    task_id: str | None,
    kind: str,
    amount: int,
    balance_after: int,
    now: float,
    note: str | None = None,
) -> None:
    session.execute(
        _INSERT_ENTRY,
        {
            "api_key_id": key_id,
            "task_id": task_id,
            "kind": kind,
            "amount": amount,
            "balance_after": balance_after,
            "note": note,
            "created_at": now,
        },
    )


def grant(
    session: Transaction, key_id: str, amount: int, now: float, note: str | None = None
) -> int:
    """Add credits to a key (or take them back with a negative amount, never below zero)."""
    row = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.balance + amount >= 0)
        .values(balance=ApiKey.balance + amount)
        .returning(ApiKey.balance)
    ).first()
    if row is None:
        exists = session.execute(select(ApiKey.id).where(ApiKey.id == key_id)).first()
        if exists is None:
            raise KeyNotFound(f"No API key with id {key_id}.")
        raise InsufficientCredits("The balance cannot go below zero.")
    _entry(session, key_id, None, GRANT, amount, row[0], now, note)
    return int(row[0])


_RESERVE = (
    update(ApiKey)
    .where(
        ApiKey.id == bindparam("key_id"),
        ApiKey.balance >= bindparam("amount"),
        # Checked again under the row lock: a revocation committed a moment ago wins.
        ApiKey.revoked_at.is_(None),
    )
    .values(balance=ApiKey.balance - bindparam("amount"))
    .returning(ApiKey.balance)
    .execution_options(synchronize_session=False)
)


def reserve(session: Transaction, key_id: str, task_id: str, amount: int, now: float) -> int:
    """Hold `amount` credits for a task; InsufficientCredits (and nothing written) if short,
    KeyRevoked if the key was revoked."""
    row = session.execute(_RESERVE, {"key_id": key_id, "amount": amount}).first()
    if row is None:
        key = session.execute(
            select(ApiKey.balance, ApiKey.revoked_at).where(ApiKey.id == key_id)
        ).first()
        if key is None or key.revoked_at is not None:
            raise KeyRevoked("The API key is not valid (unknown, revoked or mistyped).")
        raise InsufficientCredits(
            f"This request costs {amount} credits but the key's balance is {key.balance}.",
        )
    _entry(session, key_id, task_id, RESERVE, amount, row[0], now)
    return int(row[0])


def settle(session: Transaction, key_id: str, task_id: str, amount: int, now: float) -> None:
    """Turn a task's reservation into a charge (the balance already went down at reserve)."""
    balance = session.execute(select(ApiKey.balance).where(ApiKey.id == key_id)).scalar_one()
    _entry(session, key_id, task_id, SETTLE, amount, balance, now)


def refund(session: Transaction, key_id: str, task_id: str, amount: int, now: float) -> None:
    """Give a task's reservation back."""
    balance = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(balance=ApiKey.balance + amount)
        .returning(ApiKey.balance)
    ).scalar_one()
    _entry(session, key_id, task_id, REFUND, amount, balance, now)


@dataclass(frozen=True)
class Entry:
    """One ledger movement as its key's owner sees it."""

    id: int
    kind: str
    task_id: str | None
    credits: int
    #: What the entry did to the balance: + for grants and refunds, - for reserves, 0 for a
    #: settle (it turns a reservation already taken into a charge). All of a key's add up to
    #: its balance.
    balance_change: int
    balance_after: int
    note: str | None
    created_at: float


def _balance_change(kind: str, amount: int) -> int:
    if kind == RESERVE:
        return -amount
    if kind == SETTLE:
        return 0
    return amount  # grants (negative when taken back) and refunds


def entries(
    session: Transaction,
    key_id: str,
    *,
    limit: int,
    after: int | None = None,
    newest_first: bool = True,
    task_id: str | None = None,
) -> tuple[list[Entry], bool]:
    """A page of a key's entries (by id, the order they were written) and whether more follow."""
    query = select(LedgerEntry).where(LedgerEntry.api_key_id == key_id)
    if task_id is not None:
        query = query.where(LedgerEntry.task_id == task_id)
    if after is not None:
        query = query.where(LedgerEntry.id < after if newest_first else LedgerEntry.id > after)
    order = LedgerEntry.id.desc() if newest_first else LedgerEntry.id.asc()
    rows = session.execute(query.order_by(order).limit(limit + 1)).scalars().all()
    page = [
        Entry(
            id=row.id,
            kind=row.kind,
            task_id=row.task_id,
            credits=row.amount,
            balance_change=_balance_change(row.kind, row.amount),
            balance_after=row.balance_after,
            note=row.note,
            created_at=row.created_at,
        )
        for row in rows[:limit]
    ]
    return page, len(rows) > limit


@dataclass(frozen=True)
class LedgerAudit:
    """Totals for one key, and whether they add up."""

    key_id: str
    balance: int
    granted: int
    reserved: int
    settled: int
    refunded: int
    open_reservations: int

    @property
    def balanced(self) -> bool:
        """The cached balance equals the ledger, and every closed reservation closed once."""
        ledger_balance = self.granted - self.reserved + self.refunded
        return ledger_balance == self.balance and (
            self.reserved == self.settled + self.refunded + self.open_reservations
        )


def audit(session: Session, key_id: str, open_reservations: int) -> LedgerAudit:
    """Sum a key's ledger; `open_reservations` is the credits of its tasks still running."""
    totals = dict.fromkeys((GRANT, RESERVE, SETTLE, REFUND), 0)
    rows = session.execute(
        select(LedgerEntry.kind, func.coalesce(func.sum(LedgerEntry.amount), 0))
        .where(LedgerEntry.api_key_id == key_id)
        .group_by(LedgerEntry.kind)
    ).all()
    for kind, total in rows:
        totals[kind] = int(total)
    balance = session.execute(select(ApiKey.balance).where(ApiKey.id == key_id)).scalar_one()
    return LedgerAudit(
        key_id=key_id,
        balance=int(balance),
        granted=totals[GRANT],
        reserved=totals[RESERVE],
        settled=totals[SETTLE],
        refunded=totals[REFUND],
        open_reservations=open_reservations,
    )
