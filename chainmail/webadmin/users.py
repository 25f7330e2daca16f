"""``/users``: list, create (password policy), change password (``?force``), delete, test."""

from __future__ import annotations

from ..admin import Conflict, Invalid, NotFound, Stores
from ..admin import accounts as ops
from .http import Request, Response, Router, json_response, no_content

__all__ = ["add_routes"]


def add_routes(router: Router, stores: Stores) -> None:
    def list_users(req: Request) -> Response:
        return json_response([{"username": u} for u in ops.list_users(stores)])

    def create(req: Request, username: str) -> Response:
        body = req.json()
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str) or not password:
            raise Invalid('expected a JSON body {"password": "..."}')
        try:
            ops.add_user(stores, username, password, force=req.has("force"))
        except Conflict as exc:
            if not ops.user_exists(stores, username):
                raise
            raise Conflict(f"{exc}; give ?force to change its password") from None
        return no_content()

    def delete(req: Request, username: str) -> Response:
        ops.remove_user(stores, username)
        return no_content()

    def exists(req: Request, username: str) -> Response:
        if not ops.user_exists(stores, username):
            raise NotFound(f"no user {username}")
        return Response(200)

    def allowed_from(req: Request, username: str) -> Response:
        if not ops.user_exists(stores, username):
            raise NotFound(f"no user {username}")
        return json_response(sorted(stores.rrt.identities_of(username)))

    router.add("GET", "/users", list_users)
    router.add("PUT", "/users/{username}", create)
    router.add("DELETE", "/users/{username}", delete)
    router.add("HEAD", "/users/{username}", exists)
    router.add("GET", "/users/{username}/allowedFromHeaders", allowed_from)

