"""The checks that need no Ray: installed versions, the Prefect server, the store root and its catalog."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import sqlalchemy as sa

from fusion_core import uri
from fusion_core.store.tables import SCHEMA_VERSION, meta
from fusion_core.tools.doctor.check import FAIL, INSTALL_HINT, PACKAGES, PASS, WARN, Check, one_line


def versions() -> list[Check]:
    """Python, Fusion, and the installed versions of the main packages against Fusion's pins."""
    from fusion_core.data.runs import code_version

    pins = {req.name.lower().replace("_", "-"): req for req in _fusion_requirements()}
    checks = [Check("python", PASS, sys.version.split()[0]), Check("fusion", PASS, code_version())]
    for name, label in PACKAGES.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            checks.append(Check(label, FAIL, "not installed", INSTALL_HINT))
            continue
        pin = pins.get(name)
        if name == "tf-keras" and not _same_minor(found, "tensorflow"):
            checks.append(Check(label, FAIL, f"{found} does not match TensorFlow {version('tensorflow')}",
                                f"install the tf-keras of TensorFlow's version: {INSTALL_HINT}"))
        elif pin is not None and not pin.specifier.contains(found, prereleases=True):
            checks.append(Check(label, WARN, f"{found}, Fusion pins {pin.specifier}", INSTALL_HINT))
        else:
            checks.append(Check(label, PASS, found))
    return checks


def _fusion_requirements() -> list:
    from packaging.requirements import Requirement

    try:
        return [Requirement(r) for r in requires("fusion") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        return []


def _same_minor(found: str, package: str) -> bool:
    """True when ``found`` has the major.minor version of the installed ``package`` (or it is not installed)."""
    try:
        return found.split(".")[:2] == version(package).split(".")[:2]
    except PackageNotFoundError:
        return True


def prefect_server(api_url: str | None, api_key: str | None = None, timeout_s: float = 5.0) -> Check:
    """The Prefect server's version at ``api_url`` (PREFECT_API_URL) against this Prefect client's."""
    if not api_url:
        return Check("prefect server", WARN, "PREFECT_API_URL is not set: each run starts a temporary local "
                                             "server, and `fusion serve` starts one",
                     "set PREFECT_API_URL to a Prefect server to keep run history and schedules")
    request = urllib.request.Request(api_url.rstrip("/") + "/admin/version",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            server = json.load(resp)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return Check("prefect server", FAIL, f"{api_url} refused the request (HTTP {err.code})",
                         "set PREFECT_API_KEY to a key of that workspace")
        return Check("prefect server", WARN, f"{api_url} answered HTTP {err.code} to /admin/version")
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None)  # a URLError's underlying error
        return Check("prefect server", FAIL, f"cannot reach {api_url}: "
                                             f"{one_line(reason if isinstance(reason, OSError) else err)}",
                     "start the server (`prefect server start`) or fix PREFECT_API_URL; unset it to run "
                     "without one")
    client = version("prefect")
    if str(server) != client:
        return Check("prefect server", WARN, f"{server} at {api_url}, client {client}",
                     "run the same Prefect version on the server and here")
    return Check("prefect server", PASS, f"{server} at {api_url}")


# store ----------------------------------------------------------------------
def store_root(root: str) -> Check:
    """Write, read back and delete a probe object under ``<root>/.fusion-doctor/``."""
    probe_dir = uri.join(root, ".fusion-doctor")
    probe = uri.join(probe_dir, uuid.uuid4().hex)
    created = [] if uri.is_uri(root) else _missing_dirs(probe_dir)
    data = f"fusion doctor probe {probe}".encode()
    step = "write"
    try:
        uri.write_bytes(probe, data)
        step = "read back"
        if uri.read_bytes(probe) != data:
            raise OSError("the probe read back differs from what was written")
        step = "delete"
        uri.delete_file(probe)
    except Exception as err:
        hint = ("check the bucket and that the credentials (e.g. AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) "
                "allow write, read and delete" if uri.is_uri(root) else
                "check store.root (--store): its folder must be creatable and writable by this user")
        return Check("store root", FAIL, f"cannot {step} {probe}: {one_line(err)}", hint)
    finally:
        for folder in created:  # the doctor leaves no folder it made
            try:
                folder.rmdir()
            except OSError:
                break
    new = " (it did not exist: the first run creates it)" if len(created) > 1 else ""  # the root and its probe folder
    return Check("store root", PASS, f"wrote, read back and deleted a probe under {root}{new}")


def _missing_dirs(path: str) -> list[Path]:
    """The folders of a local path that do not exist yet, deepest first."""
    missing, folder = [], Path(uri.filesystem(path)[1])
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def catalog(root: str, db: str | None, timeout_s: int = 5) -> Check:
    """Connect to the catalog database and compare its schema version with this Fusion's; never creates one."""
    if db is None:
        if uri.is_uri(root):
            return Check("catalog", FAIL, "store.db is not set and store.root is a URI",
                         "set store.db to a shared database, e.g. postgresql+psycopg://user@host/fusion")
        db = f"sqlite:///{Path(root).resolve() / 'catalog.db'}"
    try:
        url = sa.engine.make_url(db)
    except sa.exc.ArgumentError:
        return Check("catalog", FAIL, "store.db is not a database URL",
                     "set store.db to a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/fusion")
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        return Check("catalog", WARN, f"no catalog yet at {url.database}; the first run creates it")
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": timeout_s}
                                  if url.get_backend_name() == "postgresql" else {})
        try:
            with engine.connect() as conn:
                found = None
                if sa.inspect(conn).has_table(meta.name):
                    found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, ImportError) as err:
        reason = one_line(getattr(err, "orig", None) or err, url.password)
        return Check("catalog", FAIL, f"cannot open {shown}: {reason}",
                     "check store.db (host, port, database, user, password, driver) and that the database "
                     "accepts connections from this machine")
    if found is None:
        return Check("catalog", WARN, f"no catalog yet in {shown}; the first run creates it")
    return schema_check(int(found), SCHEMA_VERSION, shown)


def schema_check(found: int, current: int, where: str) -> Check:
    """The catalog's schema version ``found`` against this Fusion's ``current``."""
    if found == current:
        return Check("catalog", PASS, f"schema version {found} in {where}")
    if found < current:
        return Check("catalog", WARN, f"schema version {found} in {where}, this Fusion's is {current}: "
                                      "migrates on first open")
    return Check("catalog", FAIL, f"schema version {found} in {where}, this Fusion's is {current}: "
                                  "this Fusion is older than the catalog",
                 "install the Fusion version that wrote the catalog (or newer)")

