"""Hot write paths (report ingest, the gateway's request log): rows in, without the ORM's per-call work.

On PostgreSQL these statements run on a cursor that PostgreSQL prepares: parameters bound
on the server (Django's default binds them into the text on the client, so every
statement arrives as new text, to be parsed and planned again), ``%s`` turned into ``$n``
once per statement text (psycopg does that itself only for statements of up to 50
parameters), integers always sent as ``bigint`` (psycopg picks the smallest type that
fits a value, and each mix of types would be prepared separately). Elsewhere (SQLite) the
same calls run on Django's usual cursor.

PostgreSQL keeps a generic plan for a prepared statement once it finds it no worse than
planning each run, and plans again when the tables' statistics change (autovacuum's
ANALYZE). The hot statements are lookups by key, whose plans do not depend on the values.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import Any

from django.db import connection, models
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

HOT_PREPARE_THRESHOLD = 5
_PLACEHOLDER = re.compile(r"%(%|s)")


@lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``sql`` with Django's ``%s`` placeholders as PostgreSQL's ``$1``, ``$2``... (and ``%%`` as ``%``)."""
    count = itertools.count(1)
    return _PLACEHOLDER.sub(lambda match: "%" if match.group(1) == "%" else f"${next(count)}", sql)


@cache
def _cursor_class() -> type[Any]:
    import psycopg
    from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper

    class HotCursor(psycopg.RawCursor):
        """psycopg's raw-query cursor, taking the ``%s`` placeholders Django's SQL has."""

        def __init__(self, raw: Any) -> None:
            super().__init__(raw)
            self.adapters.register_dumper(int, Int8Dumper)
            self.adapters.register_dumper(int, Int8BinaryDumper)

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            # Prepared at once: every statement run here is one the connection runs again.
            return super().execute(numbered(query), params, prepare=True, **kwargs)

    return HotCursor


@contextmanager
def hot_cursor(db: Any = None) -> Iterator[Any]:
    """A cursor for statements run hundreds of times a second with different values.

    On PostgreSQL one ``HotCursor`` per connection, kept with it (its prepared statements
    belong to the connection), wrapped as Django wraps its own, so database errors arrive
    as Django's exceptions and ``CaptureQueriesContext`` sees the statements; elsewhere
    Django's usual cursor.
    """
    db = db or connection
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            yield cursor
        return
    db.ensure_connection()
    raw = getattr(db, "_fleet_hot_cursor", None)
    if raw is None or raw.connection is not db.connection or raw.closed:
        if db.connection.prepare_threshold is None:
            # Django turns preparation off for the connection; its own (client-side
            # binding) cursors never prepare, so turning it on concerns these alone.
            db.connection.prepare_threshold = HOT_PREPARE_THRESHOLD
        raw = _cursor_class()(db.connection)
        db._fleet_hot_cursor = raw
    yield _HotDebugWrapper(raw, db) if db.queries_logged else db.make_cursor(raw)


class _HotDebugWrapper(CursorDebugWrapper):
    """Logs the statement as written (``%s`` placeholders): psycopg keeps no text of a prepared run."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        with self.debug_sql(sql, params):
            return CursorWrapper.execute(self, sql, params)


def _preparation(field: models.Field, vendor: str) -> Callable[[Any], Any] | None:
    """How a column's Python value becomes a parameter, where it needs more than itself."""
    if vendor == "postgresql" and isinstance(field, models.DateTimeField):
        return None  # psycopg sends aware datetimes as timestamptz, as Django's preparation would
    if vendor == "postgresql" and isinstance(field, models.JSONField) and field.encoder is None:
        from psycopg.types.json import Jsonb

        return Jsonb
    if isinstance(field, models.DateTimeField):
        # What get_db_prep_save ends in, without the layers before it (a third of a
        # request-log flush on SQLite): aware datetimes only, as these rows hold.
        return connection.ops.adapt_datetimefield_value
    if isinstance(field, models.JSONField):
        return lambda value: field.get_db_prep_save(value, connection)
    return None


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """One of ``model``'s own columns by field name, ``pk`` for the primary key (never a reverse relation)."""
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    assert isinstance(field, models.Field), f"{model.__name__}.{name} is not a column"
    return field


def _column(model: type[models.Model], name: str) -> str:
    column = _field(model, name).column
    assert column is not None, f"{model.__name__}.{name} has no column"
    return column


@cache
def _insert_plan(
    model: type[models.Model], fields: tuple[str, ...], vendor: str
) -> tuple[str, str, list[models.Field], list[tuple[int, Callable[[Any], Any]]]]:
    meta = [_field(model, name) for name in fields]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(_column(model, name)) for name in fields)
    head = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES "
    placeholders = f"({', '.join(['%s'] * len(fields))})"
    prepare = [(index, how) for index, field in enumerate(meta) if (how := _preparation(field, vendor)) is not None]
    return head, placeholders, meta, prepare


def rows_insert(*, model: type[models.Model], fields: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """Append rows with one multi-row INSERT per batch of rows, without model objects.

    ``bulk_create`` builds a model object per row and prepares every value of every row
    through its field; for a report of 8 GPUs that was a sizeable share of the request's
    CPU. Append-only rows (samples, request logs) hold plain numbers and strings already,
    so only times and JSON are prepared, and on PostgreSQL only JSON.
    """
    if not rows:
        return
    head, placeholders, meta, prepare = _insert_plan(model, fields, connection.vendor)
    if connection.vendor == "sqlite":
        # The sqlite3 module binds a row of an executemany in C; a multi-row VALUES is split
        # at 999 parameters anyway and binds the same way, after Python flattens it.
        if prepare:
            rows = [_prepared(row, prepare) for row in rows]
        with connection.cursor() as cursor:
            cursor.executemany(head + placeholders, rows)
        return
    size = connection.ops.bulk_batch_size(meta, rows) or len(rows)
    with hot_cursor() as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            params: list[object] = []
            for row in chunk:
                params.extend(_prepared(row, prepare))
            cursor.execute(head + ", ".join([placeholders] * len(chunk)), params)


def _prepared(row: tuple[object, ...], prepare: list[tuple[int, Callable[[Any], Any]]]) -> tuple[object, ...]:
    values = list(row)
    for index, how in prepare:
        if values[index] is not None:
            values[index] = how(values[index])
    return tuple(values)


@cache
def _update_sql(model: type[models.Model], names: tuple[str, ...], added: tuple[str, ...], count: int) -> str:
    quote = connection.ops.quote_name
    sets = [f"{quote(_column(model, name))} = %s" for name in names]
    sets += [f"{quote(column)} = {quote(column)} + %s" for column in (_column(model, n) for n in added)]
    ids = ", ".join(["%s"] * count)
    return f"UPDATE {quote(model._meta.db_table)} SET {', '.join(sets)} WHERE {quote(_column(model, 'pk'))} IN ({ids})"


def rows_update(
    *, model: type[models.Model], pks: Sequence[int], values: dict[str, Any], add: dict[str, int] | None = None
) -> None:
    """``UPDATE ... SET`` the same values (and ``column = column + n`` for ``add``) on rows by id.

    The statement's text depends only on the columns and the number of ids, so it is
    built once; values go through their field's preparation.
    """
    add = add or {}
    names = tuple(sorted(values))
    added = tuple(sorted(add))
    params = [_field(model, name).get_db_prep_save(values[name], connection) for name in names]
    params += [add[name] for name in added]
    with hot_cursor() as cursor:
        cursor.execute(_update_sql(model, names, added, len(pks)), [*params, *pks])
