"""Hot-path SELECTs that the ORM compiles once per process and shape, then only runs.

Compiling a QuerySet (resolving lookups, joins and subqueries into SQL) costs more CPU than
PostgreSQL spends answering a small indexed query. The report endpoint runs the same few
queries hundreds of times a second with different values, so each is compiled once with
marker values where its parameters go; later calls put the real values in those places,
run the SQL and pass the rows through the converters the ORM itself would apply (JSON,
booleans and times on SQLite). A query whose text depends on its arguments (an ``IN``
list) is compiled once per length of that list.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from django.db import connections
from django.db.models import QuerySet

from fleet.telemetry.bulk import hot_cursor

# Marker values stand where the parameters go; they must differ from every constant a
# query compiles in, which negative ids and NUL-prefixed strings do.
_INT_MARKER = -(10**15)


def _marker(position: int, value: Any) -> Any:
    if isinstance(value, str):
        return f"\x00prepared-{position}"
    return _INT_MARKER - position


class PreparedValues:
    """A ``.values()`` or ``.values_list()`` query built by ``build(**params)``, compiled once per shape.

    ``rows(**params)`` returns what the QuerySet would: dicts for ``values()``, tuples for
    ``values_list()``. Parameters are ints, strings, or sequences of them (for ``__in``).
    """

    def __init__(self, build: Callable[..., QuerySet[Any]], *, dicts: bool) -> None:
        self._build = build
        self._dicts = dicts
        self._compiled: dict[tuple[str, Hashable], Any] = {}
        self._lock = threading.Lock()

    def rows(self, *, using: str = "default", **params: Any) -> list[Any]:
        params = {name: list(value) if _is_list(value) else value for name, value in params.items()}
        shape = tuple((name, len(value)) if _is_list(value) else name for name, value in sorted(params.items()))
        key = (using, shape)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compile(using, params)
            with self._lock:
                self._compiled[key] = compiled
        sql, template, slots, converters, names = compiled
        values = list(template)
        for position, name, index in slots:
            values[position] = params[name] if index is None else params[name][index]
        connection = connections[using]
        with hot_cursor(connection) as cursor:
            cursor.execute(sql, values)
            rows = cursor.fetchall()
        if converters:
            rows = [_converted(row, converters, connection) for row in rows]
        if self._dicts:
            return [dict(zip(names, row, strict=True)) for row in rows]
        return [tuple(row) for row in rows]

    def _compile(self, using: str, params: dict[str, Any]) -> tuple[Any, ...]:
        markers: dict[Any, tuple[str, int | None]] = {}
        built: dict[str, Any] = {}
        for name, value in sorted(params.items()):
            if _is_list(value):
                built[name] = [_marker(len(markers) + i, item) for i, item in enumerate(value)]
                markers.update({marker: (name, i) for i, marker in enumerate(built[name])})
            else:
                built[name] = _marker(len(markers), value)
                markers[built[name]] = (name, None)
        query = self._build(**built).query
        compiler = query.get_compiler(using=using)
        sql, template = compiler.as_sql()
        slots = [
            (position, *markers[value])
            for position, value in enumerate(template)
            if isinstance(value, Hashable) and value in markers
        ]
        missing = set(markers.values()) - {(name, index) for _position, name, index in slots}
        if missing:
            raise ValueError(f"parameters {sorted(missing, key=str)} not found in the compiled query: {sql}")
        columns = [column for column, _sql, _alias in compiler.select[: compiler.col_count]]
        names = [*query.extra_select, *query.values_select, *query.annotation_select]
        return sql, tuple(template), slots, compiler.get_converters(columns), names


def _converted(row: tuple[Any, ...], converters: dict[int, tuple[list[Any], Any]], connection: Any) -> tuple[Any, ...]:
    """A row as the ORM returns it: each column through its field's converters, as the compiler applies them."""
    values = list(row)
    for position, (functions, expression) in converters.items():
        for function in functions:
            values[position] = function(values[position], expression, connection)
    return tuple(values)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence | set | frozenset) and not isinstance(value, str)
