"""The example shop on Flask, Flask-SQLAlchemy and aurora-access: run it.

Against a local cluster::

    eval "$(.venv/bin/aurora-access local up)"
    cd examples && ../.venv/bin/python -m flask_shop.app --port 8001

(the demo's tables and rows, and this app's own tables, are made if missing), or under gunicorn
once they exist: ``gunicorn --workers 2 --threads 4 'flask_shop:create_app()'`` from
``examples/``.
"""

from __future__ import annotations

import argparse

import shop_core as shop
from flask_shop import create_app
from flask_shop.extensions import aurora, db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = create_app()
    shop.create_demo_data(aurora.database(app))
    with app.app_context():
        db.create_all()
    try:
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        aurora.close(app)


if __name__ == "__main__":
    main()
