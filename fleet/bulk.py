"""Appending many rows at once, for the hot write paths (report ingest, the gateway's request log)."""

from __future__ import annotations

from django.db import connection, models


def rows_insert(*, model: type[models.Model], fields: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    """Append rows with one multi-row INSERT per batch of rows, without model objects.

    ``bulk_create`` builds a model object per row and prepares every value of every row
    through its field; for a report of 8 GPUs that was a sizeable share of the request's
    CPU. Append-only rows (samples, request logs) hold plain numbers and strings already,
    so only the columns that need it (times and JSON) go through their field's preparation.
    """
    if not rows:
        return
    meta = [model._meta.get_field(name) for name in fields]
    prepare = [index for index, field in enumerate(meta) if isinstance(field, models.DateTimeField | models.JSONField)]
    quote = connection.ops.quote_name
    head = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(field.column) for field in meta)}) VALUES "
    placeholders = f"({', '.join(['%s'] * len(fields))})"
    size = connection.ops.bulk_batch_size(meta, rows) or len(rows)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            params: list[object] = []
            for row in chunk:
                values = list(row)
                for index in prepare:
                    values[index] = meta[index].get_db_prep_save(values[index], connection)
                params.extend(values)
            cursor.execute(head + ", ".join([placeholders] * len(chunk)), params)
