"""PostgreSQL for both records: `pmpo serve --db postgresql://user@host:port/db` (or $PMPO_DB_URL) puts the
MLflow server's store in database `<db>_mlflow` and the Prefect server's in `<db>_prefect` on that server
(`pmpo_mlflow`, `pmpo_prefect` when the URL names `postgres` or no database), creating them when missing. Separate databases: each server runs its own migrations and owns its schema.

The user in the URL needs CREATEDB on first start (or create both databases beforehand). A password in the
URL reaches the servers through their command line and environment only; what pmpo prints is redacted.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pmpo.errors import PmpoError

DB_ENV = "PMPO_DB_URL"  # the documented env setting: `pmpo serve` reads it when --db is not given


class DatabaseError(PmpoError):
    """The PostgreSQL URL is malformed, or its server cannot be reached or refuses to create a database."""


@dataclass(frozen=True)
class Stores:
    """Where each server keeps its records."""

    # --backend-store-uri of `mlflow server`; the driver named, since SQLAlchemy 2.1 reads a bare postgresql:// as
    # psycopg 3, which we do not install (psycopg2-binary is the one dependency for it)
    mlflow: str
    prefect: str  # PREFECT_SERVER_DATABASE_CONNECTION_URL (asyncpg)
    databases: tuple[str, str]  # (mlflow's, prefect's) database names


def stores(url: str) -> Stores:
    """The two servers' store URLs on the PostgreSQL server `url` names."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise DatabaseError(f"--db {redacted(url)}: expected postgresql://user[:password]@host[:port]/database")
    base = parts.path.lstrip("/")
    base = "pmpo" if base in ("", "postgres") else base  # the maintenance database names no project
    names = (f"{base}_mlflow", f"{base}_prefect")
    on = lambda scheme, name: urlunsplit((scheme, parts.netloc, f"/{name}", parts.query, ""))  # noqa: E731
    return Stores(
        mlflow=on("postgresql+psycopg2", names[0]), prefect=on("postgresql+asyncpg", names[1]), databases=names
    )


def ensure_databases(url: str) -> Stores:
    """Create the two databases where missing (connected to the one `url` names, or `postgres`); return the stores."""
    import psycopg2
    from psycopg2 import sql

    found = stores(url)
    conn = _connect(url)
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            for name in found.databases:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.Error as exc:
        raise DatabaseError(
            f"--db {redacted(url)}: cannot create {', '.join(found.databases)}: {' '.join(str(exc).split())}"
        ) from None
    finally:
        conn.close()
    return found


def _connect(url: str):
    """A connection to the database the URL names, else (it need not exist) to the maintenance database."""
    import psycopg2

    parts = urlsplit(url)
    tried = [parts.path] if parts.path not in ("", "/", "/postgres") else []
    for path in [*tried, "/postgres"]:
        try:
            return psycopg2.connect(urlunsplit(("postgresql", parts.netloc, path, parts.query, "")), connect_timeout=10)
        except psycopg2.OperationalError as exc:
            error = " ".join(str(exc).split())
            if "does not exist" not in error:
                break
    raise DatabaseError(f"--db {redacted(url)}: cannot connect: {error}")


def redacted(url: str) -> str:
    """The URL with its password hidden."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
