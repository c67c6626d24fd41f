"""End-to-end installs: the real engine CLI (subprocess) against the real backend and CDN edges
on loopback; faults through a real proxy."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from patcher.manifest import BINARY_MAGIC
from testing.enginekit import (
    STAGING,
    EngineCli,
    assert_same_tree,
    downloaded_fraction,
    read_until,
)
from testing.faultproxy import Fault, FaultProxy
from tests.e2e.conftest import build_dir

PRODUCT = "star-courier"


def test_install_is_byte_for_byte(engine: EngineCli, backend: Any, user: tuple[str, str],
                                  published_store: Any, tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "games" / PRODUCT
    lines = engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    assert lines[-1]["result"] == "completed"
    # the backend kept the task's history as the engine reported it
    with backend.client(backend.login(*user)) as c:
        hist = c.get(f"/api/v1/download/tasks/{lines[-1]['task']['backendTaskId']}/history").json()
    statuses = [h["attributes"]["status"] for h in hist["data"]]
    assert statuses[0] == "queued" and "downloading" in statuses and statuses[-1] == "completed"
    assert_same_tree(target, build_dir(published_store, version))
    assert not (target / STAGING).exists()
    types = {ln.get("type") for ln in lines}
    assert "downloadTaskStatusUpdate" in types
    installed = engine.ok("installed")[-1]["installed"]
    assert [(g["productId"], g["versionId"]) for g in installed] == [(PRODUCT, version)]
    # installing what is installed is quick and changes nothing
    again = engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    assert again[-1]["result"] == "completed"


def test_unknown_and_unowned_products_are_refused(engine: EngineCli, backend: Any,
                                                  tmp_path: Path) -> None:
    code, lines, _ = engine.run("install", "no-such-game")
    assert code == 4, lines[-1:]  # not entitled / unknown product
    error = lines[-1]["task"]["errorCode"] if "task" in lines[-1] else lines[-1]["error"]["errorCode"]
    assert error in ("PERMISSION_DENIED", "PRODUCT_NOT_FOUND")
    assert not (tmp_path / "engine-data" / "library" / "no-such-game").exists()


def test_not_logged_in_is_a_clear_error(backend: Any, tmp_path: Path) -> None:
    cli = EngineCli(tmp_path / "fresh", backend.url)
    code, lines, err = cli.run("install", PRODUCT)
    assert code == 3, err
    assert "AUTH_REQUIRED" in json.dumps(lines)
    # the run's helpers (the manifest key, the pipeline's imports) end with it: none is left
    # pending when the command's loop closes, and nothing else is reported
    assert "Task was destroyed" not in err and "Traceback" not in err, err


def test_disk_space_refusal_writes_nothing(engine: EngineCli, tmp_path: Path) -> None:
    engine.env["LAUNCHER_ENGINE_KEEP_FREE_BYTES"] = str(1 << 62)
    target = tmp_path / "games" / "full-disk"
    code, lines, _ = engine.run("install", PRODUCT, "--target", str(target))
    assert code == 5
    assert "INSUFFICIENT_DISK_SPACE" in json.dumps(lines[-1])
    assert not target.exists() or not any(p.is_file() for p in target.rglob("*"))


def test_bad_config_is_named(backend: Any, tmp_path: Path) -> None:
    data = tmp_path / "cfg"
    data.mkdir()
    (data / "config.toml").write_text("connections = -3\n")
    cli = EngineCli(data, backend.url)
    code, _lines, err = cli.run("status")
    assert code == 2
    assert "connections" in err and "config.toml" in err


def test_resume_after_kill9_at_several_points(engine: EngineCli, published_store: Any,
                                              tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[-1]
    target = tmp_path / "games" / "resumed"
    args = ("install", PRODUCT, "--version", version, "--target", str(target), "--limit", "400K")
    total = None
    for fraction in (0.15, 0.45, 0.75):
        proc = engine.popen(*args)
        events = read_until(proc, downloaded_fraction(fraction))
        total = events[-1]["payload"]["totalSizeBytes"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (target / "game.py").exists() or (target / STAGING).exists()
    lines = engine.ok(*args[:-2])  # finish at full speed
    assert lines[-1]["result"] == "completed"
    assert_same_tree(target, build_dir(published_store, version))
    # resumed runs started from the journal, not from zero
    first_resumed = next(ln["payload"] for ln in lines if ln.get("type") == "downloadTaskStatusUpdate"
                         and ln["payload"]["status"] == "downloading" and ln["payload"]["totalSizeBytes"])
    assert total is not None
    assert first_resumed["downloadedBytes"] >= 0.5 * total


def test_direct_writes_install_and_resume_byte_for_byte(engine: EngineCli, published_store: Any,
                                                       tmp_path: Path) -> None:
    """``direct_writes = on`` (as for a big game): staged files written past the page cache,
    killed mid-download and resumed, end byte for byte as the build."""
    engine.env["LAUNCHER_ENGINE_DIRECT_WRITES"] = "on"
    version = published_store.product(PRODUCT).versions[-1]
    target = tmp_path / "games" / "direct"
    args = ("install", PRODUCT, "--version", version, "--target", str(target))
    proc = engine.popen(*args, "--limit", "2M")
    read_until(proc, downloaded_fraction(0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = engine.ok(*args)
    assert lines[-1]["result"] == "completed"
    assert_same_tree(target, build_dir(published_store, version))
    assert not (target / STAGING).exists()


@pytest.mark.parametrize("fault", [Fault.HTTP_503, Fault.RESET, Fault.STALL, Fault.CORRUPT])
def test_failover_to_a_healthy_edge(fault: Fault, backend_factory: Any, published_store: Any,
                                    tmp_path: Path) -> None:
    server = backend_factory(settings={})
    healthy = server.start_cdn_edge()
    with FaultProxy(healthy.url.removesuffix("/cdn/")) as proxy:
        proxy.set_fault(fault, after_bytes=100_000 if fault in (Fault.RESET, Fault.STALL,
                                                                Fault.CORRUPT) else 0,
                        path_contains="/packs/")
        server.set_edges([f"{proxy.url}/cdn/", healthy.url])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", server.url,
                        env={"LAUNCHER_ENGINE_STALL_TIMEOUT_S": "2"})
        cli.login(name, "secret-pw")
        version = published_store.product(PRODUCT).versions[0]
        target = tmp_path / "g"
        lines = cli.ok("install", PRODUCT, "--version", version, "--target", str(target))
        assert lines[-1]["result"] == "completed"
        assert_same_tree(target, build_dir(published_store, version))
        assert proxy.faults_injected >= 1
        # every range fetched again after the fault was announced (downloadRetry), and the one
        # that left the faulty edge says so (failover to another source)
        retries = [ln["payload"] for ln in lines if ln.get("type") == "downloadRetry"]
        assert any(r["kind"] == "failover" and r["nextSourceId"] != r["sourceId"] for r in retries)
        assert all(r["taskId"] == lines[-1]["task"]["taskId"] and r["attempt"] >= 1
                   and r["errorCode"] in ("CDN_UNREACHABLE", "FILE_HASH_MISMATCH")
                   and r["message"] for r in retries)


def test_every_edge_corrupt_fails_with_hash_mismatch(backend_factory: Any, published_store: Any,
                                                     tmp_path: Path) -> None:
    server = backend_factory(settings={})
    edge = server.start_cdn_edge()
    with FaultProxy(edge.url.removesuffix("/cdn/")) as proxy:
        proxy.set_fault(Fault.CORRUPT, path_contains="/packs/")
        server.set_edges([f"{proxy.url}/cdn/"])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", server.url, env={"LAUNCHER_ENGINE_MAX_ATTEMPTS": "3"})
        cli.login(name, "secret-pw")
        target = tmp_path / "g"
        code, lines, _ = cli.run("install", PRODUCT, "--target", str(target))
        assert code == 7
        assert "FILE_HASH_MISMATCH" in json.dumps(lines[-1])
        assert not (target / "game.py").exists()  # nothing unverified reached the install folder


def test_token_expiry_mid_install_refreshes(backend_factory: Any, published_store: Any,
                                            tmp_path: Path) -> None:
    server = backend_factory(settings={"cdn_token_ttl": 2})
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", server.url,
                    env={"LAUNCHER_ENGINE_TOKEN_REFRESH_MARGIN_S": "0.5"})
    cli.login(name, "secret-pw")
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "g"
    started = time.monotonic()
    # ~2.4 MB at 700 kB/s: ~3.4 s, past the 2 s token (at 1M a quick host finished in 2.4 s)
    lines = cli.ok("install", PRODUCT, "--version", version, "--target", str(target),
                   "--limit", "700K")
    assert time.monotonic() - started > 2.5  # outlived at least one token
    assert lines[-1]["result"] == "completed"
    assert_same_tree(target, build_dir(published_store, version))


def test_a_file_in_progress_reports_its_bytes(backend_factory: Any, tmp_path: Path) -> None:
    """A file that spans several blocks sends ``downloadItemProgressUpdate`` "downloading"
    events while its blocks arrive (throttled), then "completed"."""
    from tests.conftest import cli as backend_cli

    build = tmp_path / "build"
    (build / "data").mkdir(parents=True)
    (build / "data" / "big.pak").write_bytes(random.Random(16).randbytes(5 << 20))
    (build / "README").write_text("big\n")
    server = backend_factory(settings={})
    backend_cli("publish", "--store", str(server.store_dir), "--product", "bench-big",
                "--version", "1.0.0", str(build))
    name, _ = server.new_user(products=["bench-big"])
    cli = EngineCli(tmp_path / "eng", server.url)
    cli.login(name, "secret-pw")
    lines = cli.ok("install", "bench-big", "--version", "1.0.0", "--target", str(tmp_path / "g"),
                   "--limit", "2M")
    assert lines[-1]["result"] == "completed"
    items = [ln["payload"] for ln in lines if ln.get("type") == "downloadItemProgressUpdate"
             and ln["payload"]["relativePath"] == "data/big.pak"]
    moving = [i["downloadedBytes"] for i in items if i["status"] == "downloading"]
    assert moving and moving == sorted(moving) and moving[0] > 0 and moving[-1] < 5 << 20
    assert items[-1]["status"] == "completed" and items[-1]["downloadedBytes"] == 5 << 20
    assert (tmp_path / "g" / "data" / "big.pak").read_bytes() == (build / "data" / "big.pak").read_bytes()


@pytest.mark.parametrize(("kind", "code"), [("traversal", "MANIFEST_PATH_INVALID"),
                                            ("oversize", "MANIFEST_LIMIT"),
                                            ("badsig", "MANIFEST_SIGNATURE_INVALID")])
def test_malicious_manifest_is_rejected_with_nothing_written(
        kind: str, code: str, backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """A hostile CDN edge (a real HTTP server we control) serves a manifest that the backend
    never published: signed with the real key but with a traversal path or an absurd size, or
    with a signature over other bytes. The engine must refuse it before writing anything.
    (The backend's own copy, which a new install asks for beside its grant, is refused on the
    way by a real proxy: the CDN's is the one the install then takes.)"""
    import functools
    import http.server
    import threading

    import zstandard

    from patcher.manifest import manifest_to_dict

    server = backend_factory()
    store = server.store
    version = published_store.product(PRODUCT).versions[0]
    doc = manifest_to_dict(store.read_manifest(PRODUCT, version))
    if kind == "traversal":
        doc["files"][0]["path"] = "../../escaped.txt"
    elif kind == "oversize":
        doc["files"][0]["size"] = 1 << 50
    blob = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    sig = store.signing_key.sign(blob if kind != "badsig" else blob + b"x")
    evil = tmp_path / "evil-cdn"
    rel = Path(store.manifest_rel(PRODUCT, version))
    (evil / rel.parent).mkdir(parents=True)
    (evil / rel).write_bytes(blob)
    (evil / rel).with_suffix(".sig").write_bytes(sig)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server.set_edges([f"http://127.0.0.1:{httpd.server_address[1]}/"])
        name, _ = server.new_user(products=[PRODUCT])
        with FaultProxy(server.url) as api:
            api.set_fault(Fault.HTTP_503, path_contains="/download/manifests/")
            cli = EngineCli(tmp_path / "eng", api.url)
            cli.login(name, "secret-pw")
            target = tmp_path / "games" / "evil"
            exit_code, lines, _ = cli.run("install", PRODUCT, "--version", version,
                                          "--target", str(target))
            assert api.faults_injected == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert exit_code == 8, json.dumps(lines[-1:])
    assert code in json.dumps(lines[-1])
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "games" / "escaped.txt").exists()
    assert not target.exists() or not any(p.is_file() for p in target.rglob("*"))


@pytest.mark.parametrize("tampered", [False, True])
def test_a_new_install_takes_its_manifest_from_the_backend_beside_the_grant(
        tampered: bool, backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """A new install asks the backend for its signed manifest while the grant is made, and
    fetches none from the CDN; a manifest from the backend that fails its signature (bytes
    flipped on the way, through a real proxy) is not taken: the install fetches the CDN's,
    completes, and keeps the published bytes. Login pins the manifest key."""
    server = backend_factory(settings={})
    edge = server.start_cdn_edge()
    version = published_store.product(PRODUCT).versions[0]
    published = server.store.path(server.store.manifest_rel(PRODUCT, version)).read_bytes()
    binary = server.store.path(server.store.manifest_bin_rel(PRODUCT, version)).read_bytes()
    with FaultProxy(edge.url.removesuffix("/cdn/")) as cdn, FaultProxy(server.url) as api:
        server.set_edges([f"{cdn.url}/cdn/"])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", api.url)
        cli.login(name, "secret-pw")
        assert [r.path_qs for r in api.history].count("/api/v1/download/manifest-key") == 1
        if tampered:
            api.set_fault(Fault.CORRUPT, after_bytes=4096, path_contains="/download/manifests/")
        target = tmp_path / "games" / PRODUCT
        code, lines, err = cli.run("-v", "install", PRODUCT, "--version", version,
                                   "--target", str(target))
        assert code == 0 and lines[-1]["result"] == "completed", (json.dumps(lines[-1:]), err)
        assert_same_tree(target, build_dir(published_store, version))
        asked = [r.path_qs for r in api.history if "/download/manifests/" in r.path_qs]
        assert asked == [f"/api/v1/download/manifests/{PRODUCT}?form=binary&versionId={version}"]
        # pinned at login: not asked again
        assert [r.path_qs for r in api.history].count("/api/v1/download/manifest-key") == 1
        from_cdn = [r.path_qs for r in cdn.history if "/manifests/" in r.path_qs]
        if tampered:
            assert api.faults_injected == 1
            assert "from the backend not taken" in err and "SIGNATURE" in err.upper()
            assert [p.split("?")[0] for p in from_cdn] == [
                f"/cdn/{PRODUCT}/manifests/{version}.sig",
                f"/cdn/{PRODUCT}/manifests/{version}.manifest"]
        else:
            assert from_cdn == [] and "not taken" not in err
    # the engine keeps the form it checked: the backend's binary one (under names of its own,
    # which an engine older than the form never reads), or the CDN's JSON one
    cached = tmp_path / "eng" / "manifests" / PRODUCT
    kept = {p.name: p.read_bytes() for p in cached.iterdir()}
    if tampered:
        assert kept == {f"{version}.manifest": published, f"{version}.sig": server.store.path(
            server.store.manifest_rel(PRODUCT, version)).with_suffix(".sig").read_bytes()}
    else:
        assert kept == {f"{version}.bmanifest": binary, f"{version}.bsig": server.store.path(
            server.store.manifest_bin_sig_rel(PRODUCT, version)).read_bytes()}
    # and reads its copy again (verify: every file against the kept manifest)
    assert cli.ok("verify", PRODUCT)[-1]["verify"]["ok"]


def test_a_manifest_copy_that_cannot_be_kept_fails_the_install_by_name(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """The engine keeps its own copy of every manifest it installs (verify, repair, updates
    and uninstall read it). When that write fails, here because a file stands where the
    product's manifest folder belongs, the install fails with an error naming it, and no file
    of the game is committed."""
    server = backend_factory()
    version = published_store.product(PRODUCT).versions[0]
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", server.url)
    cli.login(name, "secret-pw")
    (tmp_path / "eng" / "manifests").mkdir(parents=True, exist_ok=True)
    (tmp_path / "eng" / "manifests" / PRODUCT).write_text("not a folder\n")
    target = tmp_path / "games" / PRODUCT
    code, lines, err = cli.run("install", PRODUCT, "--version", version, "--target", str(target))
    assert code != 0, json.dumps(lines[-1:])
    last = json.dumps(lines[-1])
    assert "IO_ERROR" in last and "keeping the manifest in" in last, (last, err)
    assert not (target / "game.py").exists()
    assert (tmp_path / "eng" / "manifests" / PRODUCT).read_text() == "not a folder\n"


@pytest.mark.parametrize("named", [True, False])
def test_a_damaged_cached_manifest_is_dropped_and_fetched_again(
        named: bool, backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """A manifest the engine cached itself is checked against its signature when read: a
    flipped byte there is not trusted, and not fatal either — the copy is dropped, the
    manifest fetched (and checked) again, the install completes and the cache holds the
    published bytes (the binary form when the backend gave it). Without a version the install
    takes the backend's copy beside the grant and replaces the damaged one with it (verify,
    which reads the cache, then passes)."""
    server = backend_factory()
    store = server.store
    version = published_store.product(PRODUCT).versions[0 if named else -1]
    published = store.path(store.manifest_rel(PRODUCT, version))
    blob = published.read_bytes()
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 0x01
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", server.url)
    cli.login(name, "secret-pw")
    cached = tmp_path / "eng" / "manifests" / PRODUCT
    cached.mkdir(parents=True)
    (cached / f"{version}.manifest").write_bytes(bytes(tampered))
    (cached / f"{version}.sig").write_bytes(published.with_suffix(".sig").read_bytes())
    target = tmp_path / "games" / "cached"
    exit_code, lines, err = cli.run("-v", "install", PRODUCT, *(["--version", version] if named
                                                                else []),
                                    "--target", str(target))
    assert exit_code == 0 and lines[-1]["result"] == "completed", json.dumps(lines[-1:])
    assert lines[-1]["task"]["versionId"] == version
    if named:
        assert "cached manifest of star-courier" in err and "refused" in err
    else:  # the backend's copy, taken beside the grant, replaced the damaged one
        assert "refused" not in err and "not taken" not in err
    if named:  # the CDN's JSON form replaced the damaged copy
        assert (cached / f"{version}.manifest").read_bytes() == blob
    else:  # the backend's binary form is kept beside it, and read first
        assert (cached / f"{version}.bmanifest").read_bytes() == \
            store.path(store.manifest_bin_rel(PRODUCT, version)).read_bytes()
    assert cli.ok("verify", PRODUCT)[-1]["verify"]["ok"]
    assert any(p.is_file() for p in target.rglob("*"))


def test_a_kept_manifest_that_cannot_be_decoded_is_fetched_again(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """A copy in the engine's cache whose signature holds but which this engine cannot decode
    (a form it does not know: what an engine downgraded past the binary form would meet, were
    that form kept under the JSON's names) is dropped and the manifest fetched again, instead of
    failing every install of the version."""
    server = backend_factory()
    store = server.store
    version = published_store.product(PRODUCT).versions[0]
    unreadable = BINARY_MAGIC + b"a form from the future"
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", server.url)
    cli.login(name, "secret-pw")
    cached = tmp_path / "eng" / "manifests" / PRODUCT
    cached.mkdir(parents=True)
    (cached / f"{version}.bmanifest").write_bytes(unreadable)
    (cached / f"{version}.bsig").write_bytes(store.signing_key.sign(unreadable))
    target = tmp_path / "games" / "kept"
    code, lines, err = cli.run("-v", "install", PRODUCT, "--version", version,
                               "--target", str(target))
    assert code == 0 and lines[-1]["result"] == "completed", (json.dumps(lines[-1:]), err)
    assert "not readable" in err and "MANIFEST_CORRUPT" not in json.dumps(lines[-1])
    assert not (cached / f"{version}.bmanifest").exists()
    assert (cached / f"{version}.manifest").read_bytes() == \
        store.path(store.manifest_rel(PRODUCT, version)).read_bytes()
    assert_same_tree(target, build_dir(published_store, version))
