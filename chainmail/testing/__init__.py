"""chainmail's test kit for plugin authors, and the public plugin API in one place.

The API a handler, mailet or matcher may rely on (``docs/api.md`` says what is stable)::

    from chainmail.testing import Session, Transaction, Address, HookResult, HandlerConfig
    from chainmail.testing import Mail, MailetContext

The kit (also as pytest fixtures, registered through the ``pytest11`` entry point):

- :class:`SessionDriver` (fixture ``chainmail_session``): an SMTP/LMTP session against a
  handler chain, with no socket, through the server's own session loop;
- :class:`MailetHarness` (fixture ``mailet_harness``): mailets, matchers and processors on
  a :class:`Mail`, with temporary stores;
- :class:`ChainmailServer` (fixture ``chainmail_server``): a real ``chainmail run`` on a
  free loopback port, with a :class:`FakeDns` (fixture ``fake_dns``);
- :func:`rabbitmq_node`: a throwaway RabbitMQ node of the test's own (Debian's
  ``rabbitmq-server``) for the queues on RabbitMQ.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: name -> module.  Imported on first use, so that loading the pytest plugin (every pytest
#: run of a project that installs chainmail) costs nothing until a fixture is used.
_EXPORTS = {
    # the plugin API
    "Session": "chainmail.session", "Transaction": "chainmail.session",
    "Address": "chainmail.protocol.grammar", "HookResult": "chainmail.verdict",
    "HandlerConfig": "chainmail.chain", "Mail": "chainmail.mailet.api",
    "MailetContext": "chainmail.mailet.context", "Reply": "chainmail.protocol.replies",
    "GenericMailet": "chainmail.mailet.api", "GenericMatcher": "chainmail.mailet.api",
    "MailetConfig": "chainmail.mailet.api", "MatcherConfig": "chainmail.mailet.api",
    "MailetError": "chainmail.mailet.api", "ConfigError": "chainmail.config.errors",
    # the kit
    "SessionDriver": "chainmail.testing.driver", "SessionClosed": "chainmail.testing.driver",
    "parse_reply": "chainmail.testing.driver", "MailetHarness": "chainmail.testing.harness",
    "MailetRun": "chainmail.testing.harness", "Processed": "chainmail.testing.harness",
    "ChainmailServer": "chainmail.testing.server", "SHIPPED": "chainmail.testing.server",
    "FakeDns": "chainmail.testing.fakedns", "rabbitmq_node": "chainmail.testing.rabbitmq",
    "RabbitMQ": "chainmail.testing.rabbitmq", "LocalStores": "chainmail.testing.stores",
    "Spooled": "chainmail.testing.stores",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from chainmail.chain import HandlerConfig
    from chainmail.config.errors import ConfigError
    from chainmail.mailet.api import (GenericMailet, GenericMatcher, Mail, MailetConfig,
                                      MailetError, MatcherConfig)
    from chainmail.mailet.context import MailetContext
    from chainmail.protocol.grammar import Address
    from chainmail.protocol.replies import Reply
    from chainmail.session import Session, Transaction
    from chainmail.verdict import HookResult

    from .driver import SessionClosed, SessionDriver, parse_reply
    from .fakedns import FakeDns
    from .rabbitmq import RabbitMQ, rabbitmq_node
    from .harness import MailetHarness, MailetRun, Processed
    from .server import SHIPPED, ChainmailServer
    from .stores import LocalStores, Spooled


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chainmail.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
