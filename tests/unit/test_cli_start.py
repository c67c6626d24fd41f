"""What the engine's start skips (issue 13, first byte): the CA bundle for a plain-http
backend, the distribution metadata unless --version is asked, httpx's command-line client."""

from __future__ import annotations

import ssl
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.io.backend_client import _tls_for
from testing.processes import REPO, subprocess_env


def test_plain_http_backend_loads_no_ca_and_fails_closed() -> None:
    ctx = _tls_for("http://127.0.0.1:8080")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 0  # trusts no one: a TLS peer is refused
    assert _tls_for("HTTP://backend.example") is not True
    assert _tls_for("https://backend.example") is True  # httpx's verified default


def test_version_is_read_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        expected = version("game-launcher")
    except PackageNotFoundError:
        expected = "0+unknown"
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"launcher-engine {expected}"


def test_in_process_engine_leaves_httpx_cli_out(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from engine.cli.main import main\n"
        f"code = main(['--data', {str(tmp_path / 'data')!r}, '--backend', 'http://127.0.0.1:9',"
        " 'status'])\n"
        "import httpx\n"
        "print(code, 'engine.jobs.engine' in sys.modules, 'rich' in sys.modules,"
        " 'pygments' in sys.modules, callable(httpx.main))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=subprocess_env(), timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "0 True False False True"


def test_reading_settings_imports_no_writer_and_no_default_folder_lookup(tmp_path: Path) -> None:
    """Every command reads its settings, the daemon's light client too: the temporary-file
    writer, platformdirs and the storage-error translation (sqlite3) come in when a setting is
    written or no data folder is named, not before; writing still works, atomically, 0600."""
    script = (
        "import sys\n"
        "from engine.io.config import load_settings, save_setting\n"
        f"s = load_settings({{'data_dir': {str(tmp_path)!r}}})\n"
        "print(sorted(m for m in ('tempfile', 'platformdirs', 'sqlite3') if m in sys.modules))\n"
        "s = save_setting(s, 'connections', 8)\n"
        "print(load_settings({'data_dir': s.data_dir}).connections)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=subprocess_env(), timeout=60, check=True).stdout
    assert out.splitlines()[-2:] == ["[]", "8"]
    assert (tmp_path / "config.toml").stat().st_mode & 0o777 == 0o600


def test_an_in_process_command_keeps_start_up_out_of_later_collections(tmp_path: Path) -> None:
    """The engine's start-up objects are frozen (gc.freeze) once it is built: a run's own
    allocations no longer make every collection walk them."""
    script = (
        "import gc\n"
        "from engine.cli.main import main\n"
        f"code = main(['--data', {str(tmp_path / 'data')!r}, '--backend', 'http://127.0.0.1:9',"
        " 'status'])\n"
        "print(code, gc.get_freeze_count() > 10_000, gc.isenabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=subprocess_env(), timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "0 True True"
