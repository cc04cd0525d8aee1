"""Logging filters the settings install."""

from __future__ import annotations

import logging


class TemplateLookupHidden(logging.Filter):
    """Drop the template engine's "Exception while resolving variable" records.

    At DEBUG they carry the whole context of the page, and the pages that show a new
    token once hold it in their context: the log would keep what the page showed once.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Exception while resolving variable")
