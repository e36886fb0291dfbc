"""Which errors the stage tasks retry."""

import errno

import pytest
import ray.exceptions
import sqlalchemy as sa

from fusion_core.config import ConfigError
from fusion_core.errors import is_transient, one_line


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as err:  # noqa: BLE001 - the chained exception is the value under test
        return err


@pytest.mark.parametrize("exc", [
    OSError(errno.EIO, "input/output error"),
    ConnectionResetError("peer reset"),
    TimeoutError("read timed out"),
    sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
    sa.exc.DisconnectionError("connection invalidated"),
    ray.exceptions.ActorDiedError(),
    ray.exceptions.WorkerCrashedError(),
    ray.exceptions.NodeDiedError("node 1 died"),
    ray.exceptions.OwnerDiedError("ab" * 28, None, "ingest_task"),
    ray.exceptions.ObjectLostError("ab" * 28, None, "gather"),
    ray.exceptions.RayTaskError("fn", "traceback", ConnectionResetError("s3 reset")).as_instanceof_cause(),
    _raised_from(RuntimeError("could not commit the version"), sa.exc.OperationalError("COMMIT", {}, Exception())),
])
def test_transient_errors(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    FileNotFoundError("source '/nope' does not exist"),
    PermissionError("denied"),
    IsADirectoryError("a folder"),
    NotADirectoryError("not a folder"),
    OSError(errno.ENOSPC, "no space left on device"),
    LookupError("preprocess: no images dataset in the store yet; run ingest first"),
    ValueError("bad value"),
    ConfigError("train.epochs: must be at least 1"),
    KeyError("version"),
    sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
    ray.exceptions.RayTaskError("fn", "traceback", ValueError("bad")).as_instanceof_cause(),
    ray.exceptions.RayTaskError("fn", "traceback", FileNotFoundError("gone")).as_instanceof_cause(),
    # a full disk met in a Ray task (the wrapper is an OSError without the errno)
    ray.exceptions.RayTaskError("fn", "traceback", OSError(errno.ENOSPC, "no space")).as_instanceof_cause(),
    _raised_from(ValueError("bad manifest"), KeyError("path")),
])
def test_permanent_errors(exc):
    assert not is_transient(exc)


def test_a_permanent_error_raised_from_a_transient_one_is_transient():
    assert is_transient(_raised_from(LookupError("model row missing"), ConnectionRefusedError("db down")))


def test_the_stage_tasks_retry_only_transient_errors_and_never_a_timeout():
    from prefect.states import Failed
    from prefect.task_engine import TaskRunTimeoutError

    from tasks.stages import RETRIES

    retry = RETRIES["retry_condition_fn"]
    assert RETRIES["retries"] > 0
    assert retry(None, None, Failed(data=ConnectionResetError("peer reset")))
    assert not retry(None, None, Failed(data=LookupError("no images dataset; run ingest first")))
    assert not retry(None, None, Failed(data=TaskRunTimeoutError("Scope timed out after 60 second(s).")))


@pytest.mark.parametrize("exc, line", [
    (ValueError("bad\nsecond line"), "ValueError: bad"),
    (sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused\nIs the server running?")),
     "ConnectionRefusedError: connection refused"),
    (ray.exceptions.RayTaskError("ingest_task", "Traceback ...\n", OSError(28, "No space left on device"))
     .as_instanceof_cause(), "OSError: [Errno 28] No space left on device"),
])
def test_one_line_names_the_error_that_happened(exc, line):
    assert one_line(exc) == line
