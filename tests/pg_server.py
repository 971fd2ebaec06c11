"""A throw-away PostgreSQL server on a loopback port, for the sweep tests that share one study
between worker processes (tests/test_sweep_workers.py, tests/test_sweep_chaos.py).

Uses Debian's postgresql server binaries (not on PATH; .ci/run installs them); initdb refuses
to run as root, so as root it runs as the ``postgres`` user.  Start to ready takes about a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    for initdb in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True):
        return initdb.parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextlib.contextmanager
def postgres_server(database: str = "sweeps") -> Iterator[str]:
    """Yields ``postgresql+psycopg2://harness@127.0.0.1:<port>/<database>`` (trust authentication:
    a password in the URL is accepted and ignored).  Skips the test when no server can be run."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for postgresql+psycopg2:// URLs")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
    if as_postgres:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "harness", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="harness", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {database}")
        conn.close()
        yield f"postgresql+psycopg2://harness@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
