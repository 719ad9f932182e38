"""Framework integrations: ``outlast.contrib.fastapi``, ``.django``, ``.flask``, and
``.sqlalchemy`` (triggering inside a SQLAlchemy session's transaction)."""
