"""The example shop as a FastAPI service: see app.py."""
