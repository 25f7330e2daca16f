"""``/address/aliases``, ``/address/forwards``, ``/address/groups`` (James's shapes).

Removing a mapping that is not there answers 204, as James does: the state asked for holds."""

from __future__ import annotations

import contextlib

from ..admin import NotFound, Stores
from ..admin import accounts as ops
from .http import Request, Response, Router, json_response, no_content

__all__ = ["add_routes"]


def add_routes(router: Router, stores: Stores) -> None:
    def remove(kind: str, source: str, target: str) -> Response:
        ops.normalized_address(source, f"{kind} source")
        ops.normalized_address(target, f"{kind} target")
        with contextlib.suppress(NotFound):   # James: removing what is not there is 204 too
            ops.remove_mapping(stores, kind, source, target)
        return no_content()

    # -- aliases: another name for a user
    def aliased(req: Request) -> Response:
        return json_response(ops.aliased_users(stores))

    def alias_sources(req: Request, user: str) -> Response:
        return json_response([{"source": s} for s in ops.alias_sources(stores, user)])

    def add_alias(req: Request, user: str, source: str) -> Response:
        ops.add_alias(stores, user, source)
        return no_content()

    def remove_alias(req: Request, user: str, source: str) -> Response:
        return remove("alias", source, user)

    # -- forwards: a user's mail also (or instead) goes elsewhere
    def forwarded(req: Request) -> Response:
        return json_response(ops.forward_bases(stores))

    def forward_targets(req: Request, user: str) -> Response:
        return json_response([{"mailAddress": t} for t in ops.forward_targets(stores, user)])

    def add_forward(req: Request, user: str, target: str) -> Response:
        ops.add_forward(stores, user, target)
        return no_content()

    def remove_forward(req: Request, user: str, target: str) -> Response:
        return remove("forward", user, target)

    # -- groups: an address that is no user, and its members
    def groups(req: Request) -> Response:
        return json_response(ops.groups(stores))

    def members(req: Request, group: str) -> Response:
        return json_response(ops.group_members(stores, group))

    def add_member(req: Request, group: str, member: str) -> Response:
        ops.add_group_member(stores, group, member)
        return no_content()

    def remove_member(req: Request, group: str, member: str) -> Response:
        return remove("forward", group, member)

    router.add("GET", "/address/aliases", aliased)
    router.add("GET", "/address/aliases/{user}", alias_sources)
    router.add("PUT", "/address/aliases/{user}/sources/{source}", add_alias)
    router.add("DELETE", "/address/aliases/{user}/sources/{source}", remove_alias)
    router.add("GET", "/address/forwards", forwarded)
    router.add("GET", "/address/forwards/{user}", forward_targets)
    router.add("PUT", "/address/forwards/{user}/targets/{target}", add_forward)
    router.add("DELETE", "/address/forwards/{user}/targets/{target}", remove_forward)
    router.add("GET", "/address/groups", groups)
    router.add("GET", "/address/groups/{group}", members)
    router.add("PUT", "/address/groups/{group}/{member}", add_member)
    router.add("DELETE", "/address/groups/{group}/{member}", remove_member)
