"""Accounts and tokens against the real backend process: login, rotation, revocation, the CLI."""

from __future__ import annotations

import stat
import time

import httpx
import jwt
import pytest

from tests.conftest import BackendServer, StartBackend, assert_error, cli


def test_login_returns_bearer_pair(backend: BackendServer) -> None:
    name, _ = backend.new_user()
    r = httpx.post(f"{backend.api}/auth/token", json={"username": name, "password": "secret-pw"})
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["type"] == "authToken"
    a = data["attributes"]
    assert a["tokenType"] == "Bearer"
    assert 0 < a["expiresIn"] <= 15 * 60
    claims = jwt.decode(a["accessToken"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == a["expiresIn"]
    assert claims["name"] == name
    assert len(a["refreshToken"]) >= 32


@pytest.mark.parametrize("body", [
    {"username": "nobody-here", "password": "x"},
    {"username": "PLACEHOLDER", "password": "wrong"},
    {"username": "PLACEHOLDER", "password": "x" * 200},
])
def test_login_failures_are_401_in_error_format(backend: BackendServer, body: dict[str, str]) -> None:
    name, _ = backend.new_user()
    body = {k: (name if v == "PLACEHOLDER" else v) for k, v in body.items()}
    err = assert_error(httpx.post(f"{backend.api}/auth/token", json=body), 401,
                       "INVALID_CREDENTIALS")
    assert "password" not in err["detail"].lower() or "wrong username or password" in err["detail"]


def test_login_validation_error_format(backend: BackendServer) -> None:
    err = assert_error(httpx.post(f"{backend.api}/auth/token", json={"username": "x"}), 422,
                       "VALIDATION_ERROR")
    assert err["source"] == {"pointer": "/password"}
    assert_error(httpx.post(f"{backend.api}/auth/token", content=b"{not json",
                            headers={"content-type": "application/json"}), 422)


def test_protected_routes_need_a_valid_token(backend: BackendServer) -> None:
    url = f"{backend.api}/library/items"
    assert_error(httpx.get(url), 401, "UNAUTHENTICATED")
    assert httpx.get(url).headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(url, headers={"Authorization": "Bearer nonsense"}), 401,
                 "TOKEN_INVALID")
    assert_error(httpx.get(url, headers={"Authorization": "Basic dXNlcjpwdw=="}), 401)
    _, token = backend.new_user()
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "sub": "someone-else"}, "wrong-key-" * 4, algorithm="HS256")
    assert_error(httpx.get(url, headers={"Authorization": f"Bearer {forged}"}), 401,
                 "TOKEN_INVALID")
    key = (backend.data_dir / "secrets" / "jwt.key").read_bytes()
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, key, algorithm="HS256")
    assert_error(httpx.get(url, headers={"Authorization": f"Bearer {expired}"}), 401,
                 "TOKEN_EXPIRED")
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_refresh_rotates_and_reuse_revokes_the_family(backend: BackendServer) -> None:
    name, _ = backend.new_user()
    first = backend.token_pair(name)
    r = httpx.post(f"{backend.api}/auth/refresh", json={"refreshToken": first["refreshToken"]})
    assert r.status_code == 200, r.text
    second = r.json()["data"]["attributes"]
    assert second["refreshToken"] != first["refreshToken"]
    assert httpx.get(f"{backend.api}/library/items",
                     headers={"Authorization": f"Bearer {second['accessToken']}"}).status_code == 200
    # the rotated-out token comes back: refused, and the whole family dies with it
    assert_error(httpx.post(f"{backend.api}/auth/refresh",
                            json={"refreshToken": first["refreshToken"]}), 401,
                 "REFRESH_TOKEN_REVOKED")
    assert_error(httpx.post(f"{backend.api}/auth/refresh",
                            json={"refreshToken": second["refreshToken"]}), 401,
                 "REFRESH_TOKEN_REVOKED")
    assert_error(httpx.post(f"{backend.api}/auth/refresh", json={"refreshToken": "made-up"}),
                 401, "REFRESH_TOKEN_INVALID")


def test_revoke_refresh_token_and_logout_everywhere(backend: BackendServer) -> None:
    name, _ = backend.new_user()
    a, b = backend.token_pair(name), backend.token_pair(name)
    r = httpx.post(f"{backend.api}/auth/revoke", json={"refreshToken": a["refreshToken"]})
    assert r.status_code == 204
    assert_error(httpx.post(f"{backend.api}/auth/refresh",
                            json={"refreshToken": a["refreshToken"]}), 401)
    # b is another login (family): still valid until the user logs out everywhere
    r = httpx.post(f"{backend.api}/auth/refresh", json={"refreshToken": b["refreshToken"]})
    assert r.status_code == 200
    b2 = r.json()["data"]["attributes"]
    r = httpx.post(f"{backend.api}/auth/revoke",
                   headers={"Authorization": f"Bearer {b2['accessToken']}"})
    assert r.status_code == 204
    assert_error(httpx.post(f"{backend.api}/auth/refresh",
                            json={"refreshToken": b2["refreshToken"]}), 401)
    assert_error(httpx.post(f"{backend.api}/auth/revoke", json={}), 401)


def test_another_users_refresh_token_cannot_be_revoked_by_me(backend: BackendServer) -> None:
    a_name, _ = backend.new_user()
    _, b_token = backend.new_user()
    a_pair = backend.token_pair(a_name)
    assert_error(httpx.post(f"{backend.api}/auth/revoke", json={"refreshToken": a_pair["refreshToken"]},
                            headers={"Authorization": f"Bearer {b_token}"}), 401)
    assert httpx.post(f"{backend.api}/auth/refresh",
                      json={"refreshToken": a_pair["refreshToken"]}).status_code == 200


def test_cli_user_add_and_grant_against_running_server(backend_factory: StartBackend) -> None:
    server = backend_factory()
    data = str(server.data_dir)
    extra = ["--db", server.database_url] if server.database_url else []
    out = cli("user", "add", "carol", "--password", "pw-carol", "--data", data, *extra).stdout
    assert "carol" in out
    dup = cli("user", "add", "carol", "--password", "x", "--data", data, *extra, check=False)
    assert dup.returncode != 0 and "USER_EXISTS" in dup.stderr
    cli("grant", "carol", "tiny-tactics", "--data", data, *extra)
    bad = cli("grant", "nobody", "tiny-tactics", "--data", data, *extra, check=False)
    assert bad.returncode != 0 and "USER_NOT_FOUND" in bad.stderr
    token = server.login("carol", "pw-carol")
    with server.client(token) as c:
        items = c.get("/api/v1/library/items").json()["data"]
    assert [i["attributes"]["product_id"] for i in items] == ["tiny-tactics"]
    # passwords are stored as bcrypt hashes, secrets are private files
    import sqlite3

    if server.database_url is None:
        db = sqlite3.connect(server.data_dir / "backend.sqlite")
        (hashed,) = db.execute("SELECT password_hash FROM users WHERE username='carol'").fetchone()
        db.close()
        assert hashed.startswith("$2") and "pw-carol" not in hashed
    for name in ("jwt.key", "cdn.key"):
        mode = stat.S_IMODE((server.data_dir / "secrets" / name).stat().st_mode)
        assert mode == 0o600, oct(mode)
    assert stat.S_IMODE((server.store_dir / "signing.key").stat().st_mode) == 0o600


def test_schema_version_is_checked(backend_factory: StartBackend) -> None:
    server = backend_factory(with_store=False)
    if server.database_url is not None:
        pytest.skip("SQLite-specific tampering")
    server.stop()
    import sqlite3

    db = sqlite3.connect(server.data_dir / "backend.sqlite")
    db.execute("UPDATE schema_version SET version = 999")
    db.commit()
    db.close()
    proc = cli("user", "add", "x", "--password", "y", "--data", str(server.data_dir), check=False)
    assert proc.returncode != 0
    assert "schema version" in proc.stderr
