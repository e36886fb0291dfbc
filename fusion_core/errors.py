"""Which errors are worth retrying: transient ones (a dropped connection, a dead Ray worker), not bad input."""

from __future__ import annotations

import errno

# I/O errors that a retry cannot fix: the path is wrong, forbidden or full.
PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
PERMANENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG}
# Matched by class name so this module does not import Ray or SQLAlchemy; subclasses match too.
TRANSIENT_RAY_ERRORS = {"RayActorError", "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError",
                        "ObjectLostError"}  # RayActorError covers ActorDiedError and ActorUnavailableError
TRANSIENT_DB_ERRORS = {"OperationalError", "DisconnectionError"}


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from (``__cause__``), is transient.

    Transient: I/O and connection errors (``OSError`` but the permanent ones above), SQLAlchemy's
    ``OperationalError`` and ``DisconnectionError``, and Ray's worker, actor and node deaths and lost
    objects. Everything else (``LookupError``, ``ValueError``, ``ConfigError``, ...) is permanent.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        exc = raised_by_task(exc)
        seen.add(id(exc))
        if _transient_itself(exc):
            return True
        exc = exc.__cause__
    return False


def raised_by_task(exc: BaseException) -> BaseException:
    """The error a Ray task raised, for Ray's ``RayTaskError`` that wraps it (which, as an instance of the
    task's error class, carries none of its attributes, such as an ``OSError``'s errno); else ``exc``."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    return exc


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return not isinstance(exc, PERMANENT_OS_ERRORS) and exc.errno not in PERMANENT_ERRNOS
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("ray.") and cls.__name__ in TRANSIENT_RAY_ERRORS:
            return True
        if cls.__module__ == "sqlalchemy.exc" and cls.__name__ in TRANSIENT_DB_ERRORS:
            return True
    return False


def one_line(exc: BaseException) -> str:
    """``ClassName: message`` on one line: a Ray task's error by the error the task raised, a database error by
    its driver's own first line (without the SQL)."""
    shown = raised_by_task(exc)
    shown = getattr(shown, "orig", None) or shown  # SQLAlchemy wraps the driver's error
    text = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {text[0] if text else ''}".rstrip(": ")
