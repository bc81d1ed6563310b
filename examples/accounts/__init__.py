"""An accounts service on aurora-access: FastAPI + SQLModel (sync endpoints), a Flask twin,
Alembic migrations and its own tests."""
