"""Alembic's environment for the accounts example, through aurora-access.

Online migrations run on the current writer (``db.engine("writer")``: the instance that takes
writes now, not the cluster endpoint, whose DNS lags a failover); offline ones (``--sql``)
render SQL for the writer's URL, which carries no password and needs no connection. A program
that runs migrations itself (a test) can hand its own Database in ``config.attributes["db"]``.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlmodel import SQLModel

import accounts.models  # noqa: F401 - the tables, in SQLModel.metadata
from aurora_access import Database

given = context.config.attributes.get("db")
if given is None and context.config.config_file_name is not None:
    # alembic.ini's logging ("Running upgrade ..."), leaving the program's other loggers alone
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)
db = given if given is not None else Database.from_env()
try:
    if context.is_offline_mode():
        context.configure(url=db.url(), target_metadata=SQLModel.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        with db.engine("writer").connect() as connection:
            context.configure(connection=connection, target_metadata=SQLModel.metadata)
            with context.begin_transaction():
                context.run_migrations()
finally:
    if given is None:
        db.close()
