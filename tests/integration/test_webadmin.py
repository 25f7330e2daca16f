"""WebAdmin against a running ``chainmail run``: every route and its errors, over real HTTP
(httpx), and the command line seeing WebAdmin's changes and the reverse."""

from __future__ import annotations

import re
import subprocess
import sys
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import CHAINMAIL, wait_for

WEBADMIN = re.compile(r"webadmin \((https?)\) listening on ([0-9.]+):(\d+)")


def webadmin_url(proc) -> str:
    match = wait_for(lambda: WEBADMIN.search(proc.log), what="the webadmin listening line")
    return f"{match.group(1)}://{match.group(2)}:{match.group(3)}"


def properties(**extra: str) -> str:
    keys = {"enabled": "true", "port": "0", **extra}
    return "".join(f"{k}={v}\n" for k, v in keys.items())


@pytest.fixture
def admin(chainmail_factory):
    """(process, client) of a server with WebAdmin on a free loopback port."""
    proc = chainmail_factory(files={"webadmin.properties": properties()})
    with httpx.Client(base_url=webadmin_url(proc), timeout=10) as client:
        yield proc, client


def cli(proc, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAINMAIL, *args, "--conf", str(proc.conf), "--var", str(proc.var)],
                          input=stdin, capture_output=True, text=True, timeout=60)


def assert_error(response: httpx.Response, status: int, type_: str, words: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["statusCode"] == status and body["type"] == type_ and body["details"] is None
    assert words in body["message"], body


# -- domains ----------------------------------------------------------------------------


def test_domains_and_domain_aliases(admin):
    _, c = admin
    assert c.get("/domains").json() == ["local.test"]
    assert c.put("/domains/Other.Test").status_code == 204
    assert c.put("/domains/other.test").status_code == 204       # already there: fine
    assert c.get("/domains").json() == ["local.test", "other.test"]
    assert c.get("/domains/other.test").status_code == 204
    assert_error(c.get("/domains/nowhere.test"), 404, "notFound")
    assert_error(c.put("/domains/a@b"), 400, "InvalidArgument")
    assert_error(c.put("/domains/" + "x" * 300), 400, "InvalidArgument")

    assert c.put("/domains/other.test/aliases/alias.test").status_code == 204
    assert c.get("/domains/other.test/aliases").json() == [{"source": "alias.test"}]
    assert_error(c.put("/domains/other.test/aliases/other.test"), 400, "InvalidArgument", "itself")
    assert_error(c.put("/domains/nowhere.test/aliases/x.test"), 404, "notFound")
    assert_error(c.get("/domains/nowhere.test/aliases"), 404, "notFound")
    # still in use by the alias: refused, as the command line refuses it
    assert_error(c.delete("/domains/other.test"), 409, "WrongState", "still used")
    assert c.delete("/domains/other.test/aliases/alias.test").status_code == 204
    assert c.delete("/domains/other.test/aliases/alias.test").status_code == 204
    assert c.get("/domains/other.test/aliases").json() == []
    assert c.delete("/domains/other.test").status_code == 204
    assert_error(c.delete("/domains/other.test"), 404, "notFound")
    # a domain of domainlist.xml comes back at every start
    assert_error(c.delete("/domains/local.test"), 409, "WrongState", "defaultDomain")


# -- users ------------------------------------------------------------------------------


def test_users(admin):
    proc, c = admin
    assert c.get("/users").json() == []
    assert c.put("/users/bob@local.test", json={"password": "a long secret"}).status_code == 204
    assert c.get("/users").json() == [{"username": "bob@local.test"}]
    assert c.head("/users/bob@local.test").status_code == 200
    assert c.head("/users/nobody@local.test").status_code == 404
    assert c.head("/users/not an address").status_code == 400
    assert_error(c.put("/users/bob@local.test", json={"password": "another secret"}), 409,
                 "WrongState", "already exists")
    assert c.put("/users/bob@local.test?force", json={"password": "another secret"}).status_code == 204
    from chainmail.store.users import UsersRepository
    with UsersRepository(str(proc.var / "chainmail.db")) as users:
        assert users.verify("bob@local.test", "another secret")
    assert_error(c.put("/users/carol@local.test", content=b"{not json"), 400, "InvalidArgument", "JSON")
    assert_error(c.put("/users/carol@local.test", json={"pass": "x"}), 400, "InvalidArgument")
    assert_error(c.put("/users/carol@local.test", json={"password": "short"}), 400,
                 "InvalidArgument", "at least")
    assert_error(c.put("/users/carol@elsewhere.test", json={"password": "a long secret"}), 400,
                 "InvalidArgument", "not a local domain")
    assert c.get("/users/bob@local.test/allowedFromHeaders").json() == ["bob@local.test"]
    assert c.delete("/users/bob@local.test").status_code == 204
    assert_error(c.delete("/users/bob@local.test"), 404, "notFound")
    assert c.get("/users").json() == []


def test_the_command_line_and_webadmin_see_each_others_changes(admin):
    proc, c = admin
    r = cli(proc, "user", "add", "alice@local.test", "--password-stdin", stdin="alice's secret\n")
    assert r.returncode == 0, r.stderr
    assert c.get("/users").json() == [{"username": "alice@local.test"}]
    assert c.put("/users/bob@local.test", json={"password": "bob's secret"}).status_code == 204
    assert cli(proc, "user", "list").stdout == "alice@local.test\nbob@local.test\n"
    assert c.put("/domains/new.test").status_code == 204
    assert "new.test" in cli(proc, "domain", "list").stdout.split()
    assert cli(proc, "alias", "add", "sales@local.test", "alice@local.test").returncode == 0
    assert c.get("/address/aliases/alice@local.test").json() == [{"source": "sales@local.test"}]
    # ... and the SMTP server takes the new user's mail
    with proc.smtp() as smtp:
        smtp.sendmail("x@remote.test", ["bob@local.test"], b"Subject: hi\r\n\r\nhello\r\n")


# -- address mappings -------------------------------------------------------------------


def test_aliases_forwards_and_groups(admin):
    proc, c = admin
    c.put("/users/bob@local.test", json={"password": "bob's secret"})
    # aliases
    assert c.put("/address/aliases/bob@local.test/sources/sales@local.test").status_code == 204
    assert c.get("/address/aliases").json() == ["bob@local.test"]
    assert c.get("/address/aliases/bob@local.test").json() == [{"source": "sales@local.test"}]
    assert_error(c.put("/address/aliases/bob@local.test/sources/bob@local.test"), 400,
                 "InvalidArgument", "same")
    c.put("/users/carol@local.test", json={"password": "carol's secret"})
    assert_error(c.put("/address/aliases/bob@local.test/sources/carol@local.test"), 409,
                 "WrongState", "is a user")
    assert_error(c.put("/address/aliases/bob@local.test/sources/x@elsewhere.test"), 400,
                 "InvalidArgument", "not a local domain")
    assert_error(c.put("/address/aliases/bob@local.test/sources/not-an-address"), 400,
                 "InvalidArgument")
    assert c.delete("/address/aliases/bob@local.test/sources/sales@local.test").status_code == 204
    assert c.get("/address/aliases").json() == []
    # forwards: from users only
    assert c.put("/address/forwards/bob@local.test/targets/b@remote.test").status_code == 204
    assert c.get("/address/forwards").json() == ["bob@local.test"]
    assert c.get("/address/forwards/bob@local.test").json() == [{"mailAddress": "b@remote.test"}]
    assert_error(c.put("/address/forwards/nobody@local.test/targets/b@remote.test"), 404, "notFound")
    assert_error(c.get("/address/forwards/carol@local.test"), 404, "notFound")
    # groups: addresses that are no user
    assert c.put("/address/groups/team@local.test/bob@local.test").status_code == 204
    assert c.put("/address/groups/team@local.test/carol@local.test").status_code == 204
    assert c.get("/address/groups").json() == ["team@local.test"]
    assert c.get("/address/groups/team@local.test").json() == ["bob@local.test", "carol@local.test"]
    assert_error(c.put("/address/groups/bob@local.test/carol@local.test"), 409, "WrongState")
    assert c.put("/address/groups/all@local.test/team@local.test").status_code == 204
    assert_error(c.put("/address/groups/team@local.test/all@local.test"), 409, "WrongState", "loop")
    assert c.delete("/address/groups/all@local.test/team@local.test").status_code == 204
    assert_error(c.get("/address/groups/none@local.test"), 404, "notFound")
    assert c.delete("/address/groups/team@local.test/carol@local.test").status_code == 204
    assert c.get("/address/groups/team@local.test").json() == ["bob@local.test"]
    # the command line shows what WebAdmin made
    rows = [line.split() for line in cli(proc, "alias", "list").stdout.splitlines()]
    assert ["forward", "bob@local.test", "b@remote.test"] in rows
    assert ["forward", "team@local.test", "bob@local.test"] in rows


# -- mail queues ------------------------------------------------------------------------


def _spool_three(proc) -> None:
    with proc.smtp() as smtp:
        smtp.sendmail("a@remote.test", ["bob@local.test"], b"Subject: 1\r\n\r\none\r\n")
        smtp.sendmail("b@remote.test", ["carol@local.test"], b"Subject: 2\r\n\r\ntwo\r\n")
        smtp.sendmail("b@remote.test", ["dave@local.test"], b"Subject: 3\r\n\r\nthree\r\n")


def test_mail_queues(admin):
    proc, c = admin
    _spool_three(proc)   # no mailet container: the mail stays in the spool
    assert c.get("/mailQueues").json() == ["spool"]
    assert c.get("/mailQueues/spool").json() == {"name": "spool", "size": 3}
    mails = c.get("/mailQueues/spool/mails").json()
    assert sorted(m["sender"] for m in mails) == ["a@remote.test", "b@remote.test", "b@remote.test"]
    assert all(set(m) == {"name", "sender", "recipients", "nextDelivery"} for m in mails)
    assert len(c.get("/mailQueues/spool/mails?limit=2").json()) == 2
    assert_error(c.get("/mailQueues/spool/mails?limit=0"), 400, "InvalidArgument")
    assert_error(c.get("/mailQueues/nothing"), 404, "notFound")
    assert_error(c.delete("/mailQueues/spool/mails?sender=a@remote.test&recipient=x@y.test"), 400,
                 "InvalidArgument")

    r = c.delete("/mailQueues/spool/mails?sender=b@remote.test")
    assert r.status_code == 201 and r.headers["location"] == f"/tasks/{r.json()['taskId']}"
    task = c.get(f"/tasks/{r.json()['taskId']}/await").json()
    assert task["status"] == "completed" and task["type"] == "delete-mails-from-mail-queue"
    assert task["additionalInformation"]["initialCount"] == 3
    assert task["additionalInformation"]["remainingCount"] == 1
    assert c.get("/mailQueues/spool").json()["size"] == 1
    name = c.get("/mailQueues/spool/mails").json()[0]["name"]
    assert c.delete(f"/mailQueues/spool/mails?name={name}").status_code == 201
    assert c.get("/mailQueues/spool").json()["size"] == 0
    _spool_three(proc)
    r = c.delete("/mailQueues/spool/mails")
    assert c.get(f"/tasks/{r.json()['taskId']}").json()["type"] == "clear-mail-queue"
    assert len(proc.queued()) == 0
    assert r.json() in [{"taskId": t["taskId"]} for t in c.get("/tasks?status=completed").json()]
    assert_error(c.get("/tasks/not-a-uuid"), 400, "InvalidArgument")
    assert_error(c.get("/tasks/3294a976-ce63-491e-bd52-1b6f465ed7a2"), 404, "notFound")

    assert c.patch("/mailQueues/spool/mails?delayed=true", json={"delayed": False}).status_code == 204
    assert_error(c.patch("/mailQueues/spool/mails?delayed=true", json={"delayed": True}), 400,
                 "InvalidArgument")
    assert_error(c.patch("/mailQueues/spool/mails", json={"delayed": False}), 400, "InvalidArgument")


def test_flush_of_an_outgoing_queue_writes_a_flush_request(admin):
    proc, c = admin
    from chainmail.admin import queues
    from chainmail.remote.control import pending_flush_requests
    spool = queues.open_outgoing(str(proc.var), "outgoing")
    writer = spool.open_writer()   # an empty queue is enough: the spool's directories exist
    writer.abort()
    assert "outgoing" in c.get("/mailQueues").json()
    assert c.patch("/mailQueues/outgoing?delayed=true", json={"delayed": False}).status_code == 204
    assert len(pending_flush_requests(spool.root)) == 1


# -- mail repositories ------------------------------------------------------------------


def _store_error_mails(proc, count: int = 2) -> list[str]:
    from chainmail.mailet.api import Mail
    from chainmail.mailet.repository import RepositoryStore
    repo = RepositoryStore(str(proc.var)).get("file://var/mail/error/")
    return [repo.store(Mail(f"mail{n}", "s@remote.test", ["bob@local.test"],
                            b"Subject: broken\r\nX-Test: yes\r\n\r\nbody\r\n", state="error",
                            error_message="a mailet failed",
                            attributes={"remote_addr": "192.0.2.1"})) for n in range(count)]


def test_mail_repositories(admin):
    proc, c = admin
    keys = _store_error_mails(proc)
    assert c.get("/mailRepositories").json() == [
        {"repository": "var/mail/error/", "path": "var%2Fmail%2Ferror%2F"}]
    base = "/mailRepositories/" + quote("var/mail/error/", safe="")
    assert c.get(base).json() == {"repository": "var/mail/error/",
                                  "path": "var%2Fmail%2Ferror%2F", "size": 2}
    listed = c.get(base + "/mails").json()   # in key order (two mails may share a millisecond)
    assert listed == sorted(keys)
    assert c.get(base + "/mails?offset=1&limit=1").json() == listed[1:]
    assert_error(c.get(base + "/mails?limit=0"), 400, "InvalidArgument")
    assert_error(c.get("/mailRepositories/var%2Fmail%2Fnothing%2F"), 404, "notFound")
    detail = c.get(f"{base}/mails/{keys[0]}?additionalFields=headers,messageSize").json()
    assert detail["name"] == "mail0" and detail["sender"] == "s@remote.test"
    assert detail["recipients"] == ["bob@local.test"] and detail["state"] == "error"
    assert detail["error"] == "a mailet failed" and detail["remoteAddr"] == "192.0.2.1"
    assert detail["headers"]["X-Test"] == ["yes"] and detail["messageSize"] > 0
    raw = c.get(f"{base}/mails/{keys[0]}", headers={"Accept": "message/rfc822"})
    assert raw.headers["content-type"] == "message/rfc822" and raw.content.startswith(b"Subject: broken")
    assert_error(c.get(f"{base}/mails/000000000000-0000000000000000"), 404, "notFound")
    assert_error(c.get(f"{base}/mails/{keys[0]}?additionalFields=bogus"), 400, "InvalidArgument")

    assert_error(c.patch(f"{base}/mails"), 400, "InvalidArgument", "action")
    r = c.patch(f"{base}/mails/{keys[0]}?action=reprocess&processor=transport")
    assert r.status_code == 201
    task = c.get(f"/tasks/{r.json()['taskId']}").json()
    assert task["status"] == "completed" and task["additionalInformation"]["mailKey"] == keys[0]
    queued = proc.queued()
    assert len(queued) == 1 and queued[0].envelope.state == "transport"
    assert c.delete(f"{base}/mails/{keys[1]}").status_code == 204
    assert c.get(base).json()["size"] == 0
    # the command line sees the same repository
    assert "error" in cli(proc, "repository", "list").stdout

    keys = _store_error_mails(proc, 3)
    r = c.patch(f"{base}/mails?action=reprocess")
    info = c.get(f"/tasks/{r.json()['taskId']}").json()["additionalInformation"]
    assert (info["initialCount"], info["remainingCount"]) == (3, 0)
    assert len(proc.queued()) == 4
    _store_error_mails(proc, 2)
    r = c.delete(f"{base}/mails")
    info = c.get(f"/tasks/{r.json()['taskId']}").json()["additionalInformation"]
    assert (info["initialCount"], info["remainingCount"]) == (2, 0)


# -- the server's own state and HTTP itself ---------------------------------------------


def test_metrics_healthcheck_and_reload(admin):
    proc, c = admin
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    health = c.get("/healthcheck")
    assert health.status_code in (200, 503) and health.json()["status"] in (
        "healthy", "degraded", "unhealthy")
    r = c.post("/reload")
    assert r.status_code in (202, 501)
    if r.status_code == 202:
        wait_for(lambda: "received SIGHUP" in proc.log, what="the reload")


def test_http_errors_keep_alive_and_limits(admin):
    _, c = admin
    assert_error(c.get("/nothing/here"), 404, "notFound")
    r = c.post("/domains")
    assert_error(r, 405, "InvalidArgument")
    assert "GET" in r.headers["allow"]
    assert_error(c.put("/users/x@local.test", content=b"x" * (1024 * 1024 + 1)), 413,
                 "InvalidArgument")
    # several requests on one connection
    with httpx.Client(base_url=str(c.base_url), timeout=10) as one:
        for _ in range(3):
            assert one.get("/domains").status_code == 200


def test_cors_headers_when_enabled(chainmail_factory):
    proc = chainmail_factory(files={"webadmin.properties": properties(
        **{"cors.enable": "true", "cors.origin": "https://admin.example"})})
    with httpx.Client(base_url=webadmin_url(proc), timeout=10) as c:
        r = c.get("/domains")
        assert r.headers["access-control-allow-origin"] == "https://admin.example"
        assert "PUT" in r.headers["access-control-allow-methods"]
        pre = c.options("/users/x@local.test")
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://admin.example"


def test_no_cors_headers_by_default(admin):
    _, c = admin
    assert "access-control-allow-origin" not in c.get("/domains").headers


def test_disabled_by_default(chainmail_factory):
    proc = chainmail_factory(files={"webadmin.properties": "port=0\n"})
    assert "webadmin" not in proc.log


def test_a_bad_properties_file_stops_the_start(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    from tests.conftest import DOMAINLIST, smtpserver_xml
    (conf / "smtpserver.xml").write_text(f"<smtpservers>{smtpserver_xml()}</smtpservers>")
    (conf / "domainlist.xml").write_text(DOMAINLIST.format(names="", default="local.test"))
    (conf / "webadmin.properties").write_text("# comment\nenabled=true\nport=eighty\n")
    r = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "webadmin.properties:3: port: 'eighty' is not a port" in r.stderr
    (conf / "webadmin.properties").write_text("enabled=true\nport=0\njwt.enabled=yes\n")
    r = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "webadmin.properties:3: jwt.enabled:" in r.stderr
    assert "expected true or false" in r.stderr

