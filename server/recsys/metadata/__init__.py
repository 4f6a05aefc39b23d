"""SQL metadata: users, items, interactions and the audit log (SQLAlchemy 2, Alembic)."""
