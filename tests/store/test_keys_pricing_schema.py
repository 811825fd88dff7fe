"""Key format, prices, and that migrations produce exactly the models' schema."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, select

from opendance.store.db import Database
from opendance.store.migrate import upgrade
from opendance.store.tables import ApiKey, Base
from opendance.tasks import keys
from opendance.tasks.accounts import Accounts
from opendance.tasks.pricing import PriceTable
from tests.helpers.servers import fresh_database_url, make_settings


def test_key_format_and_checksum() -> None:
    new = keys.generate()
    token = new.token
    assert token.startswith("od_") and len(token) == 3 + 8 + 1 + 38
    assert keys.parse(token) == (new.key_id, new.secret)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert keys.parse(flipped) is None
    assert keys.parse(token.replace("od_", "xx_")) is None


def test_only_a_hash_of_the_secret_is_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    accounts = Accounts(Database(url))
    created = accounts.create_key(credits=3, name="ci")
    secret = created.token.split("_")[2][:32]
    raw = (tmp_path / "k.db").read_bytes()
    assert secret.encode() not in raw
    with accounts.db.read() as session:
        row = session.execute(select(ApiKey)).scalar_one()
    assert row.secret_hash == keys.hash_secret(secret)
    assert accounts.authenticate(created.token) is not None
    assert accounts.get(created.summary.id).balance == 3


def test_prices_round_up_and_follow_groups(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, group_price_multipliers={"vip": Decimal("0.5")})
    table = PriceTable(settings)
    model = "doubao-seedance-1.0-pro-fast"
    assert table.price(model, "1080p", 5, "default") == 8
    assert table.price(model, "480p", 5, "default") == 3
    assert table.price(model, "720p", 12, "default") == 12
    assert table.price(model, "480p", 2, "default") == 2  # 1.2 rounds up
    assert table.price(model, "1080p", 5, "vip") == 4
    assert table.price(model, "1080p", 12, "default") > table.price(model, "1080p", 11, "default")


def test_migrations_match_the_models(tmp_path: Path) -> None:
    url = fresh_database_url() or f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    upgrade(url)  # idempotent
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
