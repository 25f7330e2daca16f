"""Asks an HTTP reputation service about each client before accepting its sender.

The service answers ``GET <url>?ip=<client>&sender=<address>`` with JSON
``{"verdict": "accept" | "reject" | "defer", "reason": "..."}``.
"""

from __future__ import annotations

import logging

import httpx

from chainmail.chain import HandlerConfig
from chainmail.verdict import HookResult

log = logging.getLogger("chainmail_example_plugin.reputation")


class ReputationCheck:
    """``<handler class="ReputationCheck"><url>http://127.0.0.1:8080/check</url>
    <timeout>2</timeout><failOpen>true</failOpen></handler>``

    An ``async def`` hook: it runs on trio under the server's ``handlerTimeout``, so a slow
    service never holds other sessions up.  When the service cannot be reached, the sender
    is accepted (``failOpen``, the default) or deferred with ``451 4.7.0``.
    """

    parameters = ("url", "timeout", "failOpen")

    def configure(self, config: HandlerConfig) -> None:
        self.url = config.require("url")
        self.timeout = config.get_int("timeout", 2, minimum=1)
        self.fail_open = config.get_bool("failOpen", True)

    async def on_mail(self, session, sender):
        if session.auth_user:
            return None
        params = {"ip": session.remote_ip, "sender": str(sender or "")}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.url, params=params)
                response.raise_for_status()
                answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("%s: reputation service unavailable: %s", session, exc)
            if self.fail_open:
                return None
            return HookResult.denysoft(451, "Sender check unavailable, try again later", "4.7.0")
        verdict = answer.get("verdict")
        reason = str(answer.get("reason") or "Sender rejected by policy")
        if verdict == "reject":
            return HookResult.deny(550, reason, "5.7.1")
        if verdict == "defer":
            return HookResult.denysoft(451, reason, "4.7.1")
        session.state["reputation"] = verdict
        return None
