"""Alembic migrations of the scheduler database (`env.py`, one module per revision in `versions/`)."""
