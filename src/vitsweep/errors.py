"""The one exception type for a bad configuration or missing input.

Anything raised as ``ConfigError`` is shown to the user as one line, without a traceback:
it is their input that is wrong, not the code.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitsweep.record import RunRecord

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message names the fix."""


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``err``, also when Hydra's instantiate wrapped it."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__
    return err


@contextlib.contextmanager
def reported_failures(record: RunRecord, multirun: bool) -> Iterator[None]:
    """Record why a run stopped, and tell the user in one line when it was their input.

    A ``ConfigError`` prints one line and exits 2 (a single run) or marks the job failed and
    lets the sweep go on (a multirun). Any other exception is a bug: it is recorded, then
    re-raised with its traceback in a single run, and logged with it in a multirun.
    """
    try:
        yield
    except KeyboardInterrupt:
        record.update(status="interrupted")
        raise
    except Exception as err:
        if (config_error := find_config_error(err)) is not None:
            record.update(status="failed", error=str(config_error))
            print(f"error: {config_error}", file=sys.stderr)
            if not multirun:
                raise SystemExit(2) from None
            return
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        if not multirun:
            raise
        log.exception("job failed; the sweep goes on")
