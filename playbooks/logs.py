"""Logging set-up for the command line and the service.

Logs are for engineers; the audit is the record. As a second line of defence
behind never logging secrets, every record passes a filter that blanks
anything shaped like a bearer token or a JWT.
"""

from __future__ import annotations

import logging
import sys

from playbooks.audit import redact


class RedactingFilter(logging.Filter):
    """Replaces token-looking text in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = redact(record.args)
        return True


def configure(verbosity: int) -> None:
    """ERROR by default (reports carry the warnings), INFO with -v, DEBUG with -vv."""
    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDKs log request bodies and headers at DEBUG; keep them at WARNING.
    for noisy in ("azure", "msal", "httpx", "httpcore", "kiota_http", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
