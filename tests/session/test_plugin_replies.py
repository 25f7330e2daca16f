"""A third-party handler package (tests/plugins/chainmail-test-plugin), named in
<handlerchain> and found through its entry points by the server's own configuration code,
answering in a session without a socket.  The configuration errors and the resolution of
James's sample configuration stay with the command line in tests/integration/test_plugins.py."""

from __future__ import annotations

BLOCK_A = ('<handler class="RecipientBlocker"><blocked>blocked@local.test</blocked>'
           '<code>551</code><enhanced>5.7.1</enhanced><text>Handler A says no</text></handler>')


def test_deny_with_custom_code_and_text_reaches_the_client(chainmail_session):
    s = chainmail_session(BLOCK_A)
    replies = s.raw(b"EHLO t\r\nMAIL FROM:<a@remote.example>\r\n"
                    b"RCPT TO:<blocked@local.test>\r\nRCPT TO:<ok@local.test>\r\nQUIT\r\n", replies=None)
    lines = [str(reply) for reply in replies]
    assert "551 5.7.1 Handler A says no" in lines
    assert "250 2.1.5 Recipient <ok@local.test> OK" in lines
