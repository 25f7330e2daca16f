"""The worked examples of the docs run as written: docs/mailets.md's ``LargeFor`` matcher and
``Archive`` mailet, installed as a plugin package from the page's own Python, TOML and XML
blocks, in a real ``chainmail run`` with the shipped mailetcontainer.xml."""

from __future__ import annotations

import re
import time
import tomllib

from ..conftest import ROOT
from .test_mailets import SHIPPED, cli, inbox, ok, wait_for

DOC = (ROOT / "docs" / "mailets.md").read_text()


def _block(language: str, after: str) -> str:
    """The first ``language`` code block after the text ``after``."""
    start = DOC.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(DOC, start)
    assert match, f"no {language} block after {after!r} in docs/mailets.md"
    return match.group(1)


def install_doc_package(root) -> None:
    """``mypkg`` with the page's classes and entry points, found through a dist-info."""
    section = "## 10. Writing a matcher or a mailet"
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "mail.py").write_text(_block("python", section))
    groups = tomllib.loads(_block("toml", section))["project"]["entry-points"]
    info = root / "mypkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
        for group, eps in groups.items()))


def test_archive_example_keeps_one_copy_and_delivers_once(chainmail_factory, tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    install_doc_package(plugins)
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    example = _block("xml", 'class Archive(GenericMailet)').strip()
    first_in_root = '<mailet match="All" class="PostmasterAlias"/>'
    assert SHIPPED.count(first_in_root) == 1
    container = SHIPPED.replace(first_in_root, first_in_root + "\n" + example)
    server = chainmail_factory(domains=("example.org",), files={"mailetcontainer.xml": container})
    for user in ("bob@example.org", "archive@example.org", "postmaster@example.org"):
        ok(cli(server, "user", "add", user, "--password-stdin", stdin="a long password\n"))
    time.sleep(1.1)  # the server's stores notice other processes' changes within a second

    big = "x" * 76 + "\r\n"
    content = ("From: alice@remote.example\r\nTo: bob@example.org\r\nSubject: large\r\n"
               "Message-ID: <large@test>\r\n\r\n" + big * (1 + (1 << 20) // len(big)))
    with server.smtp() as s:
        assert s.sendmail("alice@remote.example", ["bob@example.org"], content) == {}

    wait_for(lambda: inbox(server, "bob@example.org") and inbox(server, "archive@example.org"),
             what="the delivery and the archived copy")
    wait_for(lambda: not server.queued(), what="an empty spool")
    time.sleep(1.0)   # a loop would go on spooling copies: give it the time to show
    assert server.queued() == []
    [delivered] = inbox(server, "bob@example.org")
    [archived] = inbox(server, "archive@example.org")
    assert delivered["X-Archive"] == archived["X-Archive"] == "archived"
    assert inbox(server, "postmaster@example.org") == []   # no bounce either
    assert "ERROR" not in server.log
