"""The PostgreSQL driver (asyncpg): production, many app replicas, one database."""

from .store import PostgresStore

__all__ = ["PostgresStore"]
