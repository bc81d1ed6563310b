"""The example shop as a Flask service: see app.py."""
