"""``/api/v1/auth``: password login, refresh-token rotation and revocation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from backend import auth
from backend.context import CtxDep, optional_user
from backend.errors import Unauthenticated
from backend.schemas import (
    AuthTokenResource,
    Data,
    RefreshRequest,
    RevokeRequest,
    TokenRequest,
    error_responses,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


def _token_body(pair: auth.TokenPair) -> dict[str, Any]:
    return {"data": {"type": "authToken", "attributes": {
        "accessToken": pair.access_token, "refreshToken": pair.refresh_token,
        "tokenType": "Bearer", "expiresIn": pair.expires_in}}}


@router.post("/token", response_model=Data[AuthTokenResource], responses=error_responses(401, 422))
def token(body: TokenRequest, ctx: CtxDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        user = auth.authenticate(s, body.username, body.password)
        pair = auth.issue_tokens(s, ctx.secrets.jwt_key, user,
                                 access_ttl=ctx.settings.access_token_ttl,
                                 refresh_ttl=ctx.settings.refresh_token_ttl)
    return _token_body(pair)


@router.post("/refresh", response_model=Data[AuthTokenResource],
             responses=error_responses(401, 422))
def refresh(body: RefreshRequest, ctx: CtxDep) -> dict[str, Any]:
    failure: Exception | None = None
    with ctx.db.session() as s:
        try:
            pair = auth.rotate_refresh(s, ctx.secrets.jwt_key, body.refreshToken,
                                       access_ttl=ctx.settings.access_token_ttl,
                                       refresh_ttl=ctx.settings.refresh_token_ttl)
        except Unauthenticated as exc:  # keep a reuse-triggered family revocation
            failure = exc
    if failure is not None:
        raise failure
    return _token_body(pair)


@router.post("/revoke", status_code=204, response_class=Response,
             responses=error_responses(401, 422))
def revoke(
    ctx: CtxDep,
    user: Annotated[auth.AuthUser | None, Depends(optional_user)],
    body: RevokeRequest | None = None,
) -> Response:
    """Revoke a refresh token (and its rotation family); with only a bearer access token and no
    body, revoke every refresh token of that user (log out everywhere)."""
    with ctx.db.session() as s:
        auth.revoke(s, body.refreshToken if body else None, user.id if user else None)
    return Response(status_code=204)
