"""``Authentication-Results`` fields (RFC 8601), written by authres from the checks' results."""

from __future__ import annotations

from typing import Any, Iterable

import authres
import authres.arc
import authres.dmarc

from .mailauth_dkim import ArcResult, DkimResult
from .mailauth_spf import SpfOutcome

__all__ = ["HEADER", "dkim_results", "arc_result", "spf_result", "dmarc_result",
           "header_value"]

HEADER = "Authentication-Results"


def _comment(text: str) -> str | None:
    """An RFC 8601 comment may not hold unbalanced parentheses or line breaks."""
    if not text:
        return None
    cleaned = " ".join(text.replace("(", "[").replace(")", "]").split())
    return cleaned[:200]


def dkim_results(signatures: Iterable[DkimResult]) -> list[Any]:
    """One ``dkim=`` result per signature; ``dkim=none`` when the message has none."""
    out: list[Any] = []
    for sig in signatures:
        out.append(authres.DKIMAuthenticationResult(
            result=sig.result, result_comment=_comment(sig.reason),
            header_d=sig.domain or None, header_i=sig.identity or None,
            header_s=sig.selector or None, header_a=sig.algorithm or None))
    if not out:
        out.append(authres.DKIMAuthenticationResult(result="none"))
    return out


def arc_result(arc: ArcResult) -> Any:
    return authres.arc.ARCAuthenticationResult(result=arc.result,
                                               result_comment=_comment(arc.reason))


def spf_result(outcome: SpfOutcome) -> Any:
    if outcome.identity == "helo":
        return authres.SPFAuthenticationResult(result=outcome.result, smtp_helo=outcome.domain)
    return authres.SPFAuthenticationResult(result=outcome.result, smtp_mailfrom=outcome.sender)


def dmarc_result(result: str, from_domain: str | None, policy: str | None = None,
                 comment: str = "") -> Any:
    return authres.dmarc.DMARCAuthenticationResult(
        result=result, result_comment=_comment(comment), header_from=from_domain or None,
        policy=policy or None)


def header_value(authserv_id: str, results: list[Any], *, fold: bool = True) -> str:
    """The field's value (after ``Authentication-Results:``); with ``fold``, folded between
    results so that no line is overlong."""
    text = str(authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results))
    value = text.split(":", 1)[1].strip()
    return value.replace("; ", ";\r\n\t") if fold else value
