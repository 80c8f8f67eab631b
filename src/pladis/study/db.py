"""Storage: SQLAlchemy 2 models, engine set-up (SQLite in WAL mode or any SQLAlchemy URL) and Alembic migrations.

Every write runs in its own short transaction that is committed before the response goes out, so a killed server
(even SIGKILL) loses no acknowledged vote. SQLite write transactions start with ``BEGIN IMMEDIATE`` so concurrent
writers queue on the busy timeout instead of failing on a lock upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "pladis_study_alembic_version"
_PG_MIGRATION_LOCK = 0x706C6164  # an arbitrary advisory-lock key ("plad") so two servers migrate one at a time


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "study_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config_a: Mapped[str] = mapped_column(String(200))
    config_b: Mapped[str] = mapped_column(String(200))
    questions: Mapped[str] = mapped_column(String(200))  # comma separated question keys
    pairs_per_evaluator: Mapped[int] = mapped_column(Integer)
    allow_tie: Mapped[bool] = mapped_column(Boolean)
    evaluators_started: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StudyPair(Base):
    __tablename__ = "study_pairs"
    __table_args__ = (UniqueConstraint("study_id", "sample_id"), UniqueConstraint("study_id", "idx"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study_studies.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # position in the study's shuffled order (balanced assignment)
    flip: Mapped[bool] = mapped_column(Boolean)  # random start side of this pair; alternates evaluator to evaluator
    sample_id: Mapped[str] = mapped_column(String(300))
    prompt: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_a: Mapped[str] = mapped_column(Text)
    image_b: Mapped[str] = mapped_column(Text)


class Evaluator(Base):
    __tablename__ = "study_evaluators"
    __table_args__ = (UniqueConstraint("study_id", "ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study_studies.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret token; never the token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Assignment(Base):
    __tablename__ = "study_assignments"
    __table_args__ = (UniqueConstraint("evaluator_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluator_id: Mapped[int] = mapped_column(ForeignKey("study_evaluators.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 1-based order in which this evaluator sees the pairs
    pair_id: Mapped[int] = mapped_column(ForeignKey("study_pairs.id", ondelete="CASCADE"), index=True)
    a_on_left: Mapped[bool] = mapped_column(Boolean)
    key: Mapped[str] = mapped_column(String(40), unique=True)  # opaque id a vote names; reveals nothing
    shown_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Vote(Base):
    __tablename__ = "study_votes"
    __table_args__ = (UniqueConstraint("assignment_id", "question"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("study_assignments.id", ondelete="CASCADE"), index=True)
    question: Mapped[str] = mapped_column(String(40))
    choice: Mapped[str] = mapped_column(String(4))  # 'a', 'b' or 'none' (no preference)
    side: Mapped[str] = mapped_column(String(5))  # what the evaluator clicked: 'left', 'right' or 'none'
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(url: str, pool_size: int = 20) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync, foreign keys and a 30 s busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True)


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes the write lock at once on SQLite; committed on exit, rolled back on error."""
    bind = engine.execution_options(sqlite_immediate=True) if engine.dialect.name == "sqlite" else engine
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (Alembic, run in-process)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("version_table", VERSION_TABLE)
    bind = engine.execution_options(sqlite_immediate=True) if engine.dialect.name == "sqlite" else engine
    with bind.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"
