"""The Flask shop for a production server: ``gunicorn --preload 'flask_shop.wsgi:app'``.

The app is made once, in gunicorn's master process, and its database checked there (a writer
answers, the shop's tables are readable) before the workers are forked: each worker then uses
the same Database object with connections, threads and commit marks of its own (aurora-access
notices the fork; nothing of the master's connections is used or closed by a worker).
"""

from __future__ import annotations

from sqlalchemy import func, select

from aurora_access.demo.models import Product
from flask_shop import create_app
from flask_shop.extensions import aurora, db

app = create_app()
aurora.database(app).wait_ready(timeout=30)
with app.app_context():
    db.session.scalar(select(func.count()).select_from(Product))
