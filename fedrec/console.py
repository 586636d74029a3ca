"""What a ``fedrec`` command prints: one line per event on the console, everything in the run
directory's log file.

Flower adds its own coloured console handler to the ``flwr`` logger and also lets its records
propagate to the root logger, where hydra has put a console handler and the run's log file: every
Flower line then appeared twice on the console. Here Flower's own console handler is removed, so
each record reaches the console once (through hydra's handler, at INFO and above) and the log
file in full (DEBUG included). Libraries that only chatter at INFO are held to warnings.
"""

from __future__ import annotations

import logging

CHATTY_LIBRARIES = ("alembic",)
# Notices a user of fedrec cannot act on: kept in the log file, not shown on the console.
FILE_ONLY_NOTICES = (
    # fedrec simulate calls run_simulation on purpose (docs/federation.md says why).
    "The `run_simulation` function is deprecated",
)


class _FileOnlyNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in FILE_ONLY_NOTICES)


def route_logs(console_level: int = logging.INFO) -> None:
    """Call once, after hydra configured logging and before the job runs."""
    from flwr.supercore.logger import console_handler  # importing flwr adds this handler

    flower = logging.getLogger("flwr")
    flower.removeHandler(console_handler)
    flower.propagate = True
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(console_level)
            if not any(isinstance(f, _FileOnlyNotices) for f in handler.filters):
                handler.addFilter(_FileOnlyNotices())
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
