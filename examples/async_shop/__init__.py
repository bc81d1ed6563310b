"""The example shop as an async FastAPI service on ``AsyncDatabase``: see app.py."""
