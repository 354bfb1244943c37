"""Customers and API keys: random keys, stored only as hashes, several per customer,
revocation and disabling effective at once. Runs on SQLite and PostgreSQL."""

import hashlib
import string

import pytest
from sqlalchemy import select

from app.customers import (
    authenticate,
    create_customer,
    get_customer,
    issue_key,
    list_customers,
    list_keys,
    revoke_key,
    update_customer,
)
from app.db import Database
from app.errors import NotFound, OperatorError
from app.models import ApiKey, Base


async def all_stored_values(db: Database) -> list[tuple[str, str, object]]:
    """(table, column, value) for every value in every table."""
    found: list[tuple[str, str, object]] = []
    async with db.read() as conn:
        for table in Base.metadata.sorted_tables:
            for row in (await conn.execute(select(table))).mappings():
                found.extend((table.name, column, value) for column, value in row.items())
    return found


async def test_a_key_is_64_hex_chars_of_32_random_bytes(db: Database) -> None:
    keys = [(await create_customer(db, f"c{i}", "standard"))[1] for i in range(8)]
    for key in keys:
        assert len(key) == 64
        assert set(key) <= set(string.hexdigits)
        assert len(bytes.fromhex(key)) >= 32
    assert len(set(keys)) == len(keys)
    # Random, not derived from the name or a counter: no shared 8-char prefix among 8 keys.
    assert len({key[:8] for key in keys}) == len(keys)


async def test_only_the_sha256_of_a_key_is_stored(db: Database) -> None:
    customer_id, key = await create_customer(db, "Alice", "standard")
    second = await issue_key(db, customer_id)

    async with db.read() as conn:
        rows = (await conn.execute(select(ApiKey.key_hash, ApiKey.prefix))).all()
    hashes = {row.key_hash for row in rows}
    assert hashes == {hashlib.sha256(k.encode()).hexdigest() for k in (key, second)}

    values = await all_stored_values(db)
    assert values, "the dump must see the rows we just wrote"
    for plain in (key, second):
        for table, column, value in values:
            assert plain not in str(value), f"plain key stored in {table}.{column}"
    # The public prefix names the key, and is far too short to be the key.
    for row in rows:
        assert len(row.prefix) <= 16
        assert key.startswith(row.prefix) or second.startswith(row.prefix)


async def test_authenticate_finds_the_live_customer(db: Database) -> None:
    customer_id, key = await create_customer(db, "Bob", "smartpanel", markup_bp=2500)
    caller = await authenticate(db, key)
    assert caller is not None
    assert caller.customer_id == customer_id
    assert caller.dialect == "smartpanel"
    assert caller.markup_bp == 2500
    assert caller.balance == 0


@pytest.mark.parametrize("attempt", ["", "0" * 64, "the prefix", "upper"])
async def test_wrong_keys_authenticate_nobody(db: Database, attempt: str) -> None:
    _, key = await create_customer(db, "Carol", "standard")
    wrong = {"the prefix": key[:8], "upper": key.upper()}.get(attempt, attempt)
    if wrong == key:  # an all-digit key upper-cases to itself (1 chance in 2**40)
        pytest.skip("drew an all-digit key")
    assert await authenticate(db, wrong) is None


async def test_several_keys_per_customer_each_work(db: Database) -> None:
    customer_id, first = await create_customer(db, "Dave", "standard")
    others = [await issue_key(db, customer_id) for _ in range(3)]
    for key in [first, *others]:
        caller = await authenticate(db, key)
        assert caller is not None and caller.customer_id == customer_id
    assert len(await list_keys(db, customer_id)) == 4


async def test_keys_of_different_customers_are_their_own(db: Database) -> None:
    a, key_a = await create_customer(db, "A", "standard")
    b, key_b = await create_customer(db, "B", "standard")
    assert (await authenticate(db, key_a)).customer_id == a  # type: ignore[union-attr]
    assert (await authenticate(db, key_b)).customer_id == b  # type: ignore[union-attr]


async def test_revocation_takes_effect_at_once(db: Database) -> None:
    customer_id, first = await create_customer(db, "Erin", "standard")
    second = await issue_key(db, customer_id)
    assert await authenticate(db, first) is not None

    prefix = next(k.prefix for k in await list_keys(db, customer_id) if first.startswith(k.prefix))
    await revoke_key(db, prefix)

    assert await authenticate(db, first) is None  # the very next lookup
    assert await authenticate(db, second) is not None  # the other key is untouched
    views = {k.prefix: k for k in await list_keys(db, customer_id)}
    assert views[prefix].revoked_at is not None
    assert sum(v.revoked_at is None for v in views.values()) == 1
    with pytest.raises(NotFound):
        await revoke_key(db, prefix)  # already revoked
    with pytest.raises(NotFound):
        await revoke_key(db, "nosuchpf")


async def test_disabled_customer_is_rejected_and_re_enabled_works(db: Database) -> None:
    customer_id, first = await create_customer(db, "Frank", "standard")
    second = await issue_key(db, customer_id)

    await update_customer(db, customer_id, disabled=True)
    assert (await get_customer(db, customer_id)).disabled is True
    assert await authenticate(db, first) is None
    assert await authenticate(db, second) is None

    await update_customer(db, customer_id, disabled=False)
    assert (await authenticate(db, first)).customer_id == customer_id  # type: ignore[union-attr]
    assert (await authenticate(db, second)).customer_id == customer_id  # type: ignore[union-attr]


@pytest.mark.parametrize("again", ["Grace", "  Grace  "])
async def test_duplicate_names_are_refused(db: Database, again: str) -> None:
    await create_customer(db, "Grace", "standard")
    with pytest.raises(OperatorError):
        await create_customer(db, again, "standard")
    customers = await list_customers(db)
    assert [c.name for c in customers] == ["Grace"]
    async with db.read() as conn:
        assert len((await conn.execute(select(ApiKey.id))).all()) == 1  # no orphan key


async def test_renaming_onto_an_existing_name_is_refused(db: Database) -> None:
    await create_customer(db, "Heidi", "standard")
    ivan, _ = await create_customer(db, "Ivan", "standard")
    with pytest.raises(OperatorError):
        await update_customer(db, ivan, name="Heidi")
    assert (await get_customer(db, ivan)).name == "Ivan"


async def test_empty_name_is_refused(db: Database) -> None:
    with pytest.raises(OperatorError):
        await create_customer(db, "   ", "standard")
    assert await list_customers(db) == []


async def test_renaming_to_an_empty_name_is_refused(db: Database) -> None:
    customer_id, _ = await create_customer(db, "Judy", "standard")
    with pytest.raises(OperatorError):
        await update_customer(db, customer_id, name="   ")
    assert (await get_customer(db, customer_id)).name == "Judy"


async def test_unknown_customer_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        await get_customer(db, 999)
    with pytest.raises(NotFound):
        await issue_key(db, 999)
    with pytest.raises(NotFound):
        await update_customer(db, 999, disabled=True)


async def test_markup_and_dialect_can_be_changed_and_reset(db: Database) -> None:
    customer_id, key = await create_customer(db, "Ken", "standard", markup_bp=1000)
    await update_customer(db, customer_id, markup_bp=2500, dialect="smartpanel")
    caller = await authenticate(db, key)
    assert caller is not None
    assert (caller.markup_bp, caller.dialect) == (2500, "smartpanel")
    await update_customer(db, customer_id, markup_bp=None)  # back to the default markup
    assert (await get_customer(db, customer_id)).markup_bp is None
