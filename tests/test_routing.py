"""The routing decision, without a database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aurora_access.routing import Route, statement_route, text_is_read_only


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    stock: Mapped[int]


@pytest.mark.parametrize("statement", [
    sa.select(Product),
    sa.select(Product.id).where(Product.stock > 0).union(sa.select(Product.id)),
    sa.select(sa.func.count()).select_from(Product),
    sa.text("SELECT * FROM products WHERE id = :id"),
    sa.text("  -- leading comment\n select 'update products set x = 1' as note"),
    sa.text("/* delete */ SELECT last_update, updated_at FROM products"),
    sa.text("WITH cheap AS (SELECT * FROM products WHERE price < 5) SELECT * FROM cheap"),
    sa.text("VALUES (1), (2)"),
    sa.text("SHOW server_version"),
    sa.text("EXPLAIN SELECT 1"),
    sa.text("(SELECT 1) UNION (SELECT 2);"),
    sa.text("SELECT $$ insert into x $$ AS dollar_quoted"),
    sa.text("SHOW TABLES"),
    sa.text("SELECT @@version, sleep(0)"),
])
def test_reads_go_to_a_reader(statement: object) -> None:
    assert statement_route(statement) is Route.READER


@pytest.mark.parametrize("statement", [
    sa.insert(Product).values(name="x", stock=1),
    sa.update(Product).values(stock=Product.stock - 1),
    sa.delete(Product),
    sa.select(Product).with_for_update(),
    sa.select(Product).with_for_update(read=True),
    sa.schema.CreateTable(Product.__table__),
    sa.text("UPDATE products SET stock = stock - 1"),
    sa.text("with moved as (delete from products returning *) select * from moved"),
    sa.text("SELECT * INTO backup FROM products"),
    sa.text("SELECT * FROM products FOR NO KEY UPDATE"),
    sa.text("SELECT * FROM products FOR KEY SHARE"),
    sa.text("SELECT * FROM products LOCK IN SHARE MODE"),
    sa.text("SELECT nextval('orders_id_seq')"),
    sa.text("SELECT 1; DELETE FROM products"),
    sa.text("CREATE TABLE t (id int)"),
    sa.text("EXPLAIN ANALYZE DELETE FROM products"),
    sa.text("CALL restock()"),
    # MySQL / MariaDB
    sa.text("REPLACE INTO products (id, name) VALUES (1, 'x')"),
    sa.text("SELECT id INTO @last FROM products LIMIT 1"),
    sa.text("SELECT NEXT VALUE FOR order_seq"),
    sa.text("SELECT LAST_INSERT_ID()"),
    sa.text("SELECT found_rows()"),
    sa.text("SELECT GET_LOCK('checkout', 1)"),
    sa.text("LOAD DATA INFILE '/tmp/p.csv' INTO TABLE products"),
    sa.text("MERGE INTO products USING x ON true WHEN MATCHED THEN DELETE"),
    sa.text("set search_path = public"),
    sa.text(""),
])
def test_writes_and_unknown_statements_go_to_the_writer(statement: object) -> None:
    assert statement_route(statement) is Route.WRITER


def test_flush_and_a_transaction_that_wrote_go_to_the_writer() -> None:
    assert statement_route(None, flushing=True) is Route.WRITER
    assert statement_route(sa.select(Product), wrote=True) is Route.WRITER


def test_pinning() -> None:
    pinned_reader = sa.text("SELECT nextval('s')").execution_options(aurora_route="reader")
    assert statement_route(pinned_reader) is Route.READER
    assert statement_route(sa.select(Product).execution_options(aurora_route="writer")
                           ) is Route.WRITER
    assert statement_route(sa.select(Product), pinned="writer") is Route.WRITER
    # once the transaction wrote, even a pinned read stays with its writes
    assert statement_route(pinned_reader, wrote=True) is Route.WRITER
    with pytest.raises(ValueError, match="aurora_route must be 'writer' or 'reader'"):
        statement_route(sa.select(Product), pinned="primary")


_words = st.sampled_from(["insert", "update", "delete", "merge", "into", "for update",
                          "nextval(", "; drop table x"])


@given(_words, st.sampled_from(["'", '"']))
def test_write_words_inside_literals_do_not_matter(word: str, quote: str) -> None:
    literal = quote + word.replace(quote, quote * 2) + quote
    assert text_is_read_only(f"SELECT {literal} AS x FROM products")


@given(st.sampled_from(["INSERT INTO t VALUES (1)", "UPDATE t SET a = 1", "DELETE FROM t"]),
       st.sampled_from(["SELECT * FROM w", "SELECT count(*) FROM w"]))
def test_a_data_modifying_cte_always_writes(dml: str, tail: str) -> None:
    assert not text_is_read_only(f"WITH w AS ({dml} RETURNING *) {tail}")


def test_a_select_from_a_data_modifying_cte_writes() -> None:
    moved = sa.delete(Product).where(Product.stock == 0).returning(Product.id).cte("moved")
    assert statement_route(sa.select(moved.c.id)) is Route.WRITER
    assert statement_route(sa.select(Product).join(moved, moved.c.id == Product.id)
                           ) is Route.WRITER
    cheap = sa.select(Product).where(Product.stock < 5).cte("cheap")
    assert statement_route(sa.select(cheap.c.id)) is Route.READER
