"""``/domains``: local domains and domain aliases (James's DomainsRoutes)."""

from __future__ import annotations

from ..admin import NotFound, Stores
from ..admin import domains as ops
from .http import Request, Response, Router, json_response, no_content

__all__ = ["add_routes"]


def add_routes(router: Router, stores: Stores) -> None:
    def list_domains(req: Request) -> Response:
        return json_response(ops.list_domains(stores))

    def exists(req: Request, domain: str) -> Response:
        if not stores.domains.contains(ops.normalized(domain)):
            raise NotFound(f"{domain} is not a local domain")
        return no_content()

    def create(req: Request, domain: str) -> Response:
        ops.add_domain(stores, domain)   # already there: nothing to do, as in James
        return no_content()

    def delete(req: Request, domain: str) -> Response:
        ops.remove_domain(stores, domain, force=req.has("force"))
        return no_content()

    def aliases(req: Request, domain: str) -> Response:
        return json_response([{"source": s} for s in ops.domain_aliases(stores, domain)])

    def add_alias(req: Request, domain: str, alias: str) -> Response:
        ops.add_domain_alias(stores, alias, domain)
        return no_content()

    def remove_alias(req: Request, domain: str, alias: str) -> Response:
        target = ops.normalized(domain)
        ops.normalized(alias)
        try:
            ops.remove_domain_alias(stores, alias, target)
        except NotFound:
            if not stores.domains.contains(target):
                raise NotFound(f"{target} is not a local domain") from None
        return no_content()

    router.add("GET", "/domains", list_domains)
    router.add("GET", "/domains/{domain}", exists)
    router.add("PUT", "/domains/{domain}", create)
    router.add("DELETE", "/domains/{domain}", delete)
    router.add("GET", "/domains/{domain}/aliases", aliases)
    router.add("PUT", "/domains/{domain}/aliases/{alias}", add_alias)
    router.add("DELETE", "/domains/{domain}/aliases/{alias}", remove_alias)
