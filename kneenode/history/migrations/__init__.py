"""Alembic migrations of the history database (run by :func:`kneenode.history.migrate.upgrade`)."""
