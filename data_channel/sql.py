"""SQL channels on PostgreSQL (psycopg 3): a query read through a server-side cursor, a table written with COPY.

**Connection.** `sql.connection` is a `secretRef` whose value is a libpq connection string or URI
(`postgresql://user@host:5432/db`); see `data_channel.base.secret_value` for where it is read locally. Connecting
is retried for up to `CONNECT_TIMEOUT_SECONDS` while the server refuses connections.

**Source.** `sql.query`, or `SELECT <the schema's fields> FROM <sql.table>`, runs in a read-only transaction
through a server-side cursor (`DECLARE ... CURSOR`), `fetchSize` rows at a time at most, so the result is never
held whole in memory. Columns are found by name; a missing one is an error before any row is read. Values are
cast to the channel schema (`schema.from_values`); a row that does not fit is a record error naming its row
number in the result. Resuming at row N moves the cursor forward (`MOVE FORWARD N`, on the server, without
transferring the rows): **a query must return its rows in a stable order (`ORDER BY` a key) for a resumed flow
to be exact**. For `table`, synchronised sequential scans are switched off so a plain scan keeps its order.

**Sink.** Rows are written with `COPY <table> (<fields>) FROM STDIN (FORMAT csv)`, one transaction per commit.
With `createTable` the table is created when missing, from the channel schema:

| field type                  | column type        |
| --------------------------- | ------------------ |
| `boolean`                   | `boolean`          |
| `integer` (`int32`)         | `integer`          |
| `integer` (`int64`, none)   | `bigint`           |
| `number` (`float`)          | `real`             |
| `number` (`double`, none)   | `double precision` |
| `string`                    | `text`             |
| `string` (`date`)           | `date`             |
| `string` (`date-time`)      | `timestamptz`      |
| `string` (`bytes`)          | `bytea`            |
| `array`, `object`           | `jsonb`            |

Non-nullable fields are `NOT NULL`. Each commit also upserts the sink's watermark into the table
`modelops_sink_watermarks (sink_key, watermark)` of the same database **in the same transaction** as the rows:
after a crash the sink knows exactly which source rows its table holds, whatever the flow's own checkpoint says,
so a resumed flow neither duplicates nor loses a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from data_channel.base import (
    ChannelContext,
    ChannelError,
    ChannelUnavailable,
    Sink,
    Source,
    SourceBatch,
    SourceSize,
    secret_value,
)
from data_channel.schema import from_values
from ir.models import DataChannelSpec, FieldType, SqlOptions

__all__ = ["CONNECT_TIMEOUT_SECONDS", "WATERMARK_TABLE", "SqlSink", "SqlSource", "column_type"]

CONNECT_TIMEOUT_SECONDS: Final = 30.0
COUNT_TIMEOUT_MS: Final = 10_000
"""How long the source may count its rows (`SELECT count(*)`, for a progress bar) before it goes on without."""
WATERMARK_TABLE: Final = "modelops_sink_watermarks"


def column_type(ftype: FieldType) -> str:
    """The PostgreSQL column type of a field type (see the table in the module docstring)."""
    t, f = ftype.type, ftype.format
    if t == "boolean":
        return "boolean"
    if t == "integer":
        return "integer" if f == "int32" else "bigint"
    if t == "number":
        return "real" if f == "float" else "double precision"
    if t == "string":
        return {"date": "date", "date-time": "timestamptz", "bytes": "bytea"}.get(f or "", "text")
    return "jsonb"


def _options(spec: DataChannelSpec) -> SqlOptions:
    if spec.sql is None:
        raise ChannelError("a sql channel needs 'sql' options")
    return spec.sql


def _table(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def _pg_message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return str(primary or exc).strip().splitlines()[0] if (primary or str(exc)) else type(exc).__name__


async def connect(conninfo: str, what: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> psycopg.AsyncConnection[Any]:
    """A connection, retrying while the server is unreachable; `ChannelUnavailable` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10)
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise ChannelUnavailable(f"{what}: cannot connect to PostgreSQL: {_pg_message(exc)}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        except psycopg.Error as exc:
            raise ChannelError(f"{what}: cannot connect to PostgreSQL: {_pg_message(exc)}") from exc


class SqlSource(Source):
    """Reads a query's rows through a server-side cursor (see the module docstring)."""

    type: ClassVar[str] = "sql"
    resumable: ClassVar[bool] = True
    finite: ClassVar[bool] = True

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._cursor: psycopg.AsyncServerCursor[Any] | None = None
        self._positions: list[int] = []
        self._next = 0
        self._size: SourceSize | None = None

    def describe(self) -> str:
        what = f"table {self.options.table}" if self.options.table else "query"
        return f"sql source '{self.name}' ({what})"

    async def size(self) -> SourceSize | None:
        """The query's row count, taken in the source's transaction before its cursor opened."""
        return self._size

    async def _count(self) -> None:
        """`SELECT count(*)` of the query, given `COUNT_TIMEOUT_MS` at most (in a savepoint: a cancelled count
        leaves the transaction usable). An expensive query runs twice: the count is worth it for the progress."""
        assert self._conn is not None
        counted = sql.SQL("SELECT count(*) FROM ({}) AS modelops_count").format(self._query())
        await self._conn.execute("SAVEPOINT modelops_count")
        try:
            await self._conn.execute(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}")
            row = await (await self._conn.execute(counted)).fetchone()
        except psycopg.Error:  # too slow (cancelled), or a query that only runs as written: go on without
            await self._conn.execute("ROLLBACK TO SAVEPOINT modelops_count")
            return
        await self._conn.execute("RELEASE SAVEPOINT modelops_count")
        await self._conn.execute("SET LOCAL statement_timeout TO DEFAULT")
        if row is not None:
            self._size = SourceSize(int(row[0]))

    def _query(self) -> sql.SQL | sql.Composed:
        if self.options.query is not None:
            return sql.SQL(self.options.query)  # the IR's query, run as written
        columns = sql.SQL(", ").join(sql.Identifier(f.name) for f in self.schema.fields)
        return sql.SQL("SELECT {} FROM {}").format(columns, _table(self.options.table or ""))

    async def open(self, start: int = 0, state: Mapping[str, Any] | None = None) -> None:
        conninfo = secret_value(self.options.connection.secret_ref, self.context.environ)
        self._conn = await connect(conninfo, self.describe())
        try:
            await self._start(start)
        except BaseException:
            await self.close()  # an open transaction would hold its locks until the process exits
            raise

    async def _start(self, start: int) -> None:
        assert self._conn is not None
        try:
            await self._conn.execute("SET TRANSACTION READ ONLY")
            if self.options.table is not None:
                await self._conn.execute("SET synchronize_seqscans = off")
            await self._count()
            self._cursor = self._conn.cursor("modelops_source")
            self._cursor.itersize = self.options.fetch_size
            await self._cursor.execute(self._query())
            names = [column.name for column in self._cursor.description or []]
            missing = [f.name for f in self.schema.fields if f.name not in names]
            if missing:
                raise ChannelError(
                    f"{self.describe()}: the result has no column {', '.join(repr(m) for m in missing)} "
                    f"(columns: {', '.join(names) or 'none'})"
                )
            self._positions = [names.index(f.name) for f in self.schema.fields]
            if start:
                await self._cursor.scroll(start)
        except psycopg.Error as exc:
            raise ChannelError(f"{self.describe()}: {_pg_message(exc)}") from exc
        except IndexError:
            self._next = start  # MOVE past the end: nothing is left to read
            return
        self._next = start

    async def read(self, max_records: int) -> SourceBatch | None:
        if self._stopping or self._cursor is None:
            return None
        try:
            rows = await self._cursor.fetchmany(min(max_records, self.options.fetch_size))
        except psycopg.OperationalError as exc:
            raise ChannelUnavailable(f"{self.describe()}: lost the connection: {_pg_message(exc)}") from exc
        except psycopg.Error as exc:
            raise ChannelError(f"{self.describe()}: {_pg_message(exc)}") from exc
        if not rows:
            return None
        return await asyncio.to_thread(self._batch, rows)

    def _batch(self, rows: list[tuple[Any, ...]]) -> SourceBatch:
        start = self._next
        count = len(rows)
        transposed = list(zip(*rows, strict=True))
        columns = {f.name: transposed[i] for f, i in zip(self.schema.fields, self._positions, strict=True)}
        ordinals = np.arange(start, start + count, dtype=np.int64)

        what = f"table {self.options.table}" if self.options.table else "query"

        def locate(row: int) -> str:
            return f"row {start + row + 1} of the {what}"

        good, kept, errors = from_values(columns, count, self.schema, ordinals, locate)
        self._next += count
        return SourceBatch(good, kept, start, start + count, errors, where=lambda o: f"row {o + 1} of the {what}")

    async def close(self) -> None:
        if self._cursor is not None:
            cursor, self._cursor = self._cursor, None
            with contextlib.suppress(psycopg.Error):
                await cursor.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
            await conn.close()


def _copy_ready(batch: pa.RecordBatch, spec: DataChannelSpec) -> pa.RecordBatch:
    """Columns as COPY's CSV wants them: arrays as JSON (jsonb), `bytes` as bytea hex (`\\x0a1b`)."""
    columns = []
    changed = False
    for field, column in zip(spec.record_schema.fields, batch.columns, strict=True):
        if field.type == "array":
            column = pa.array(
                [None if v is None else orjson.dumps(v).decode() for v in column.to_pylist()], type=pa.string()
            )
            changed = True
        elif field.format == "bytes":
            column = pa.array([None if v is None else "\\x" + v.hex() for v in column.to_pylist()], type=pa.string())
            changed = True
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names) if changed else batch


class SqlSink(Sink):
    """Writes rows into a table with COPY, and its watermark in the same transaction (see the module docstring)."""

    type: ClassVar[str] = "sql"
    keeps_watermark: ClassVar[bool] = True

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self.table = self.options.table or ""
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._pending: list[bytes] = []
        self._key = ""

    def describe(self) -> str:
        return f"sql sink '{self.name}' (table {self.table})"

    async def open(self, key: str, state: Mapping[str, Any] | None) -> int:
        self._key = key
        conninfo = secret_value(self.options.connection.secret_ref, self.context.environ)
        self._conn = await connect(conninfo, self.describe())
        conn = self._conn
        try:
            async with conn.transaction():
                if self.options.create_table:
                    columns = sql.SQL(", ").join(
                        sql.SQL("{} {}{}").format(
                            sql.Identifier(f.name),
                            sql.SQL(column_type(f)),  # from a fixed table
                            sql.SQL("" if f.nullable else " NOT NULL"),
                        )
                        for f in self.schema.fields
                    )
                    await conn.execute(
                        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(_table(self.table), columns)
                    )
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (sink_key text PRIMARY KEY, watermark bigint NOT NULL, "
                        "updated_at timestamptz NOT NULL DEFAULT now())"
                    ).format(sql.Identifier(WATERMARK_TABLE))
                )
            probe = sql.SQL("SELECT {} FROM {} LIMIT 0").format(
                sql.SQL(", ").join(sql.Identifier(f.name) for f in self.schema.fields), _table(self.table)
            )
            await conn.execute(probe)
            cursor = await conn.execute(
                sql.SQL("SELECT watermark FROM {} WHERE sink_key = %s").format(sql.Identifier(WATERMARK_TABLE)), [key]
            )
            row = await cursor.fetchone()
            await conn.commit()
        except psycopg.errors.UniqueViolation:
            # Two flows creating the watermark table at once: the other one won, which is all we need.
            await conn.rollback()
            return await self.open(key, state)
        except psycopg.Error as exc:
            await self.close()
            hint = "" if self.options.create_table else " (set createTable: true to create it from the schema)"
            raise ChannelError(f"{self.describe()}: {_pg_message(exc)}{hint}") from exc
        return int(row[0]) if row else 0

    async def write(self, records: pa.RecordBatch, ordinals: np.ndarray, token: Any = None) -> None:
        if records.num_rows:
            self._pending.append(await asyncio.to_thread(self._encode, records))

    def _encode(self, records: pa.RecordBatch) -> bytes:
        out = pa.BufferOutputStream()
        pacsv.write_csv(_copy_ready(records, self.spec), out, write_options=pacsv.WriteOptions(include_header=False))
        return bytes(out.getvalue())

    async def commit(self, watermark: int) -> dict[str, Any]:
        conn = self._conn
        if conn is None:
            raise ChannelError(f"{self.describe()}: not open")
        data, self._pending = self._pending, []
        columns = sql.SQL(", ").join(sql.Identifier(f.name) for f in self.schema.fields)
        try:
            async with conn.transaction():
                if data:
                    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(_table(self.table), columns)
                    async with conn.cursor().copy(statement) as copy:
                        for chunk in data:
                            await copy.write(chunk)
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (sink_key, watermark) VALUES (%s, %s) ON CONFLICT (sink_key) "
                        "DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()"
                    ).format(sql.Identifier(WATERMARK_TABLE)),
                    [self._key, watermark],
                )
        except psycopg.OperationalError as exc:
            raise ChannelUnavailable(f"{self.describe()}: lost the connection: {_pg_message(exc)}") from exc
        except psycopg.Error as exc:
            raise ChannelError(f"{self.describe()}: {_pg_message(exc)}") from exc
        return {"watermark": watermark}

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
