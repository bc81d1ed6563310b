"""The accounts service's tables and payloads, as SQLModel models.

Passwords are stored as PBKDF2 hashes with a per-user salt; the iteration count is low because
this is an example whose tests log in hundreds of times, not a recommendation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlmodel import Field, SQLModel

_ITERATIONS = 1_000


class User(SQLModel, table=True):
    __tablename__ = "account_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=200, unique=True)
    password_hash: str = Field(max_length=200)


class Item(SQLModel, table=True):
    __tablename__ = "account_item"

    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="account_user.id", index=True)
    name: str = Field(max_length=200)


class UserIn(SQLModel):
    email: str = Field(min_length=3, max_length=200)
    password: str = Field(min_length=1, max_length=200)


class UserOut(SQLModel):
    id: int
    email: str


class PasswordIn(SQLModel):
    password: str = Field(min_length=1, max_length=200)


class ItemIn(SQLModel):
    name: str = Field(min_length=1, max_length=200)


class ItemOut(SQLModel):
    id: int
    owner_id: int
    name: str


def hash_password(password: str) -> str:
    salt = secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), _ITERATIONS)
    return f"{salt}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    salt, _, digest = stored.partition("$")
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), _ITERATIONS)
    return hmac.compare_digest(candidate.hex(), digest)
