"""The SQL store of every run, program, LLM call, tool call and engine sample (SQLAlchemy 2.0).

SQLite file by default (any SQLAlchemy URL works). Writes never block the agents or the engine:
callers enqueue rows and a writer thread commits them in batches (every 0.2 s or 500 rows), each
batch one transaction, so a run killed midway leaves a readable database holding everything up to
the last batch. Times are epoch seconds (float). Program and call ids are made by the caller, so no
write has to wait for the database to hand back a key.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    backend: Mapped[str | None] = mapped_column(String(50))
    config: Mapped[dict | None] = mapped_column(JSON)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class Program(Base):
    __tablename__ = "programs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    task: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # running, finished, failed, timeout, cancelled
    arrival_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    jct_s: Mapped[float | None] = mapped_column(Float)
    turns: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    tenant: Mapped[str | None] = mapped_column(String(200), index=True)  # the ProgramHint's; None: no tenancy


class LLMCall(Base):
    __tablename__ = "llm_calls"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    is_last_turn: Mapped[bool] = mapped_column(Boolean)
    queued_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    first_token_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(20))
    prompt: Mapped[str | None] = mapped_column(Text)  # the last message sent (the whole history is redundant)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # the program's KV pin from its previous turn was still held when this call was sent (None: unknown)
    pin_held: Mapped[bool | None] = mapped_column(Boolean)
    # prompt tokens whose KV was reused from other positions (KVShare/DHD; None: unknown)
    reused_tokens: Mapped[int | None] = mapped_column(Integer)


class ToolCallRow(Base):
    __tablename__ = "tool_calls"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    arguments: Mapped[dict | None] = mapped_column(JSON)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(50))
    output: Mapped[str | None] = mapped_column(Text)
    predicted_duration_s: Mapped[float | None] = mapped_column(Float)
    ttl_s: Mapped[float | None] = mapped_column(Float)


class EngineSample(Base):
    __tablename__ = "engine_samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    t: Mapped[float] = mapped_column(Float)
    blocks_total: Mapped[int] = mapped_column(Integer)
    blocks_used: Mapped[int] = mapped_column(Integer)
    blocks_pinned: Mapped[int] = mapped_column(Integer)
    blocks_free: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer)
    waiting: Mapped[int] = mapped_column(Integer)


def normalize_url(db: str) -> str:
    """A bare path means a SQLite file."""
    return db if "://" in db else f"sqlite:///{db}"


def open_db(db: str):
    """An SQLAlchemy engine with the schema created; SQLite in WAL mode so readers see a live run."""
    url = normalize_url(db)
    eng = create_engine(url)
    if url.startswith("sqlite"):
        @event.listens_for(eng, "connect")
        def _pragmas(conn, _record):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    _create_schema(eng)
    return eng


def _create_schema(eng) -> None:
    """Creates missing tables and columns. Another process may open the same new database at once
    (a report or the dashboard reading a run that is starting): what it creates between our check
    and our CREATE fails ours with "already exists" (or "duplicate column"), and checking again
    skips it; each retry follows one more table or column the other side made."""
    tries = 2 * len(Base.metadata.sorted_tables) + 3
    for attempt in range(tries):
        try:
            Base.metadata.create_all(eng)
            _add_missing_columns(eng)
            return
        except OperationalError as e:
            raced = "already exists" in str(e) or "duplicate column" in str(e)
            if not raced or attempt == tries - 1:
                raise


def _add_missing_columns(eng) -> None:
    """A database written before a column was added gets it, so old runs stay readable: added
    columns are nullable and old rows read as NULL (unknown)."""
    inspector = inspect(eng)
    with eng.begin() as conn:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {col.type.compile(eng.dialect)}"))


class Store:
    """Queue-backed writer. `insert(Model, row)` / `update(Model, id, fields)` return at once."""

    def __init__(self, db: str = "agentrt.db", batch_interval_s: float = 0.2, batch_size: int = 500):
        self.db = db
        self.engine = open_db(db)
        self._queue: queue.Queue = queue.Queue()
        self._interval, self._batch_size = batch_interval_s, batch_size
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._writer, name="agentrt-store", daemon=True)
        self._thread.start()

    def insert(self, model: type[Base], row: dict[str, Any]) -> None:
        self._queue.put(("insert", model, row))

    def update(self, model: type[Base], key: str, fields: dict[str, Any]) -> None:
        self._queue.put(("update", model, (key, fields)))

    def flush(self) -> None:
        """Blocks until everything queued so far is committed."""
        done = threading.Event()
        self._queue.put(("flush", None, done))
        done.wait()
        if self._error is not None:
            raise RuntimeError(f"store writer failed: {self._error!r}") from self._error

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()
        self.engine.dispose()

    def _writer(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self._batch_size:
                try:
                    items.append(self._queue.get(timeout=self._interval))
                except queue.Empty:
                    break
                if items[-1] is None or items[-1][0] == "flush":
                    break
            stop = items[-1] is None
            flushes = [it[2] for it in items if it is not None and it[0] == "flush"]
            try:
                self._commit([it for it in items if it is not None and it[0] != "flush"])
            except Exception as exc:  # keep the thread alive; report on the next flush
                self._error = exc
            for done in flushes:
                done.set()

    def _commit(self, items: list) -> None:
        if not items:
            return
        with Session(self.engine) as session, session.begin():
            pending: dict[type, list] = {}
            for op, model, payload in items:
                if op == "insert":
                    pending.setdefault(model, []).append(payload)
                    continue
                for m, rows in pending.items():  # keep order: inserts before a later update
                    session.execute(insert(m), rows)
                pending.clear()
                key, fields = payload
                session.execute(update(model).where(model.id == key).values(**fields))
            for m, rows in pending.items():
                session.execute(insert(m), rows)


def read_rows(db, model: type[Base], **where) -> list[dict]:
    """Rows of a table as dicts, filtered by equality (or membership, for a list, set or subquery
    value): for reports and tests. `db` is a URL or path, or an engine from `open_db`."""
    eng = open_db(db) if isinstance(db, str) else db
    try:
        with Session(eng) as session:
            stmt = select(model)
            for k, v in where.items():
                col = getattr(model, k)
                many = isinstance(v, (list, set, tuple, Select))
                stmt = stmt.where(col.in_(v if isinstance(v, Select) else list(v)) if many else col == v)
            return [{c.name: getattr(obj, c.name) for c in model.__table__.columns}
                    for obj in session.scalars(stmt)]
    finally:
        if isinstance(db, str):
            eng.dispose()
