"""``chainmail check-config`` on temporary configurations: every error in one pass,
warnings with suggestions for misspelt parameters, ``--strict``, TLS material opened."""

from __future__ import annotations

import os
import subprocess
import sys

from cryptography.hazmat.primitives.serialization import pkcs12

from ..conftest import CHAINMAIL, NO_DNS

SERVER = """<smtpservers>
<smtpserver>
<jmxName>mx</jmxName>
<bind>127.0.0.1:0</bind>
{tls}
<handlerchain>
{handlers}
</handlerchain>
</smtpserver>
</smtpservers>
"""

CONTAINER = """<mailetcontainer>
<processors>
<processor state="root">
{mailets}
<mailet match="All" class="ToProcessor"><processor>transport</processor></mailet>
</processor>
<processor state="transport">
<mailet match="All" class="Null"/>
</processor>
<processor state="error">
<mailet match="All" class="Null"/>
</processor>
</processors>
</mailetcontainer>
"""


def conf_dir(tmp_path, *, handlers="", tls="", mailets=None, extra=None):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(SERVER.format(handlers=handlers, tls=tls))
    (conf / "dnsservice.xml").write_text(NO_DNS)
    if mailets is not None:
        (conf / "mailetcontainer.xml").write_text(CONTAINER.format(mailets=mailets))
    for name, text in (extra or {}).items():
        (conf / name).write_text(text)
    return conf


def check(tmp_path, conf, *args, env=None):
    return subprocess.run([*CHAINMAIL, "check-config", "--conf", str(conf),
                           "--var", str(tmp_path / "var"), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


def test_misspelt_parameters_are_warnings_with_a_suggestion_and_strict_makes_them_errors(tmp_path):
    conf = conf_dir(
        tmp_path,
        handlers='<handler class="ValidRcptHandler">\n'
                 '<enableRecipientRewriteTabel>false</enableRecipientRewriteTabel>\n</handler>',
        mailets='<mailet match="All" class="RecipientRewriteTable">\n'
                '<errorProcesor>error</errorProcesor>\n</mailet>\n'
                '<mailet match="HostIs=example.org" class="RemoteDelivery" onMailetException="ignore">\n'
                '<maxRetrys>3</maxRetrys><mail.smtp.port>2525</mail.smtp.port>\n</mailet>\n'
                '<mailet match="All=everything" class="Null"/>')
    result = check(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    smtp, mc = conf / "smtpserver.xml", conf / "mailetcontainer.xml"
    assert (f"warning: {smtp}:8: handler ValidRcptHandler: enableRecipientRewriteTabel: unknown "
            "parameter is ignored; did you mean <enableRecipientRewriteTable>?") in out
    # each warning names the parameter's own line, not the <mailet> line
    assert (f"warning: {mc}:5: mailet RecipientRewriteTable: errorProcesor: unknown parameter "
            "is ignored; did you mean <errorProcessor>?") in out
    assert (f"warning: {mc}:8: mailet RemoteDelivery: maxRetrys: unknown parameter is ignored; "
            "did you mean <maxRetries>?") in out
    assert f"warning: {mc}:10: matcher All: takes no condition; 'everything' is ignored" in out
    assert "mail.smtp.port: unknown" not in out and "onMailetException: unknown" not in out
    # the effective parameters of every mailet and the DNS settings are shown
    assert "maxRetrys = 3" in out and "mail.smtp.port = 2525" in out
    assert "dnsservice: (" in out and "servers = 127.0.0.1:9" in out
    assert "autodiscover = false" in out

    strict = check(tmp_path, conf, "--strict")
    assert strict.returncode == 1
    assert "4 warning(s), which --strict makes errors" in strict.stderr


def test_every_error_of_a_configuration_in_one_pass(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(
        "<smtpservers>\n"
        "<smtpserver><jmxName>a</jmxName>\n<bind>127.0.0.1:2x5</bind></smtpserver>\n"
        "<smtpserver><jmxName>b</jmxName>\n<bind>127.0.0.1:0</bind>\n"
        "<connectiontimeout>soon</connectiontimeout></smtpserver>\n"
        "<smtpserver><jmxName>c</jmxName><bind>127.0.0.1:0</bind><handlerchain>\n"
        '<handler class="NoSuchHandler"/>\n'
        '<handler class="ValidRcptHandler"><enableRecipientRewriteTable>maybe'
        "</enableRecipientRewriteTable></handler>\n"
        "</handlerchain></smtpserver>\n"
        "</smtpservers>\n")
    (conf / "domainlist.xml").write_text(
        "<domainlist>\n<domainnames>\n<domainname>bad domain</domainname>\n</domainnames>\n</domainlist>\n")
    (conf / "dnsservice.xml").write_text("<dnsservice>\n<servers><server>dns.example</server>"
                                         "</servers>\n</dnsservice>\n")
    (conf / "mailetcontainer.xml").write_text(CONTAINER.format(
        mailets='<mailet match="NoSuchMatcher" class="Null"/>\n'
                '<mailet match="All" class="NoSuchMailet"/>\n'
                '<mailet match="All" class="ToRepository"/>'))
    result = check(tmp_path, conf)
    assert result.returncode == 1
    err = result.stderr
    smtp, mc = conf / "smtpserver.xml", conf / "mailetcontainer.xml"
    expected = [f"{smtp}:3: bind:", f"{smtp}:6: connectiontimeout:",
                f"{smtp}:8: handler: no installed handler provides 'NoSuchHandler'",
                f"{smtp}:9: handler ValidRcptHandler: enableRecipientRewriteTable: 'maybe' is "
                "not a boolean; expected true or false",
                f"{conf / 'domainlist.xml'}:3: domainname: invalid domain 'bad domain'",
                f"{conf / 'dnsservice.xml'}:2: server:",
                f"{mc}:4: matcher: no installed matcher provides 'NoSuchMatcher'",
                f"{mc}:5: mailet: no installed mailet provides 'NoSuchMailet'",
                f"{mc}:6: mailet ToRepository: repositoryPath: is required"]
    for text in expected:
        assert text in err, (text, err)
    assert f"{len(expected)} configuration error(s)" in err
    assert "Traceback" not in err


def test_a_conf_directory_that_does_not_exist(tmp_path):
    result = check(tmp_path, tmp_path / "nowhere")
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()
    assert str(tmp_path / "nowhere") in line and "configuration directory" in line
    assert result.stdout == ""


def _keystore(path, secret: str) -> None:
    from chainmail.server.tls import create_self_signed_keystore
    create_self_signed_keystore(str(path), secret, ["mx.test"])


TLS = ('<tls socketTLS="false" startTLS="true">\n<keystore>{keystore}</keystore>\n'
       '<keystoreType>{type}</keystoreType>\n<secret>{secret}</secret>\n</tls>')


def test_tls_material_is_opened_wrong_secret_jks_and_missing_file(tmp_path):
    good = tmp_path / "good.p12"
    _keystore(good, "right")
    assert pkcs12.load_key_and_certificates(good.read_bytes(), b"right")[0] is not None
    jks = tmp_path / "old.jks"
    jks.write_bytes(b"\xfe\xed\xfe\xed" + os.urandom(64))
    cases = {"secret": TLS.format(keystore=good, type="PKCS12", secret="wrong"),
             "jks": TLS.format(keystore=jks, type="JKS", secret="changeit"),
             "missing": TLS.format(keystore=tmp_path / "nope.p12", type="PKCS12", secret="x"),
             "ok": TLS.format(keystore=good, type="PKCS12", secret="right")}
    results = {}
    for name, tls in cases.items():
        base = tmp_path / name
        base.mkdir()
        results[name] = check(base, conf_dir(base, tls=tls))
    where = lambda name: f"{tmp_path / name / 'conf' / 'smtpserver.xml'}:5: tls/keystore: "
    assert results["ok"].returncode == 0, results["ok"].stderr
    secret = results["secret"]
    assert secret.returncode == 1 and where("secret") + f"{good}:" in secret.stderr
    assert "opened by <secret>" in secret.stderr
    jks_err = results["jks"].stderr
    assert results["jks"].returncode == 1 and where("jks") in jks_err
    assert "keytool -importkeystore" in jks_err and "-deststoretype PKCS12" in jks_err
    missing = results["missing"].stderr
    assert results["missing"].returncode == 1
    assert where("missing") + f"cannot read {tmp_path / 'nope.p12'}" in missing
    assert "chainmail keystore" in missing


PLUGIN = '''
class PickyHandler:
    parameters = ("delay",)

    def configure(self, config):
        if int(config.get("delay", "1")) <= 0:
            raise ValueError("delay must be positive")
'''


def test_an_exception_in_configure_is_reported_with_file_and_line_without_traceback(tmp_path):
    """A third-party handler installed the ordinary way (a dist-info with entry points)."""
    site = tmp_path / "site"
    (site / "picky-0.1.dist-info").mkdir(parents=True)
    (site / "picky.py").write_text(PLUGIN)
    (site / "picky-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: picky\nVersion: 0.1\n")
    (site / "picky-0.1.dist-info" / "entry_points.txt").write_text(
        "[chainmail.handlers]\nPickyHandler = picky:PickyHandler\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
    conf = conf_dir(tmp_path, handlers='<handler class="PickyHandler">\n<delay>-5</delay>\n</handler>\n'
                                       '<handler class="PickyHandler"><delay>x</delay></handler>')
    for command in ("check-config", "run"):
        result = subprocess.run([*CHAINMAIL, command, "--conf", str(conf), "--var", str(tmp_path / "var")],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert result.returncode != 0, command
        assert (f"{conf / 'smtpserver.xml'}:7: handler PickyHandler: configure() failed: "
                "ValueError: delay must be positive") in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
        if command == "check-config":   # the second handler's error in the same pass
            assert (f"{conf / 'smtpserver.xml'}:10: handler PickyHandler: configure() failed: "
                    "ValueError: invalid literal for int()") in result.stderr


def test_three_errors_of_one_block_and_a_bad_mailet_value_at_their_own_lines(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(
        "<smtpservers>\n<smtpserver>\n<jmxName>mx</jmxName>\n<bind>127.0.0.1:0</bind>\n"
        "<connectionLimit>many</connectionLimit>\n<maxmessagesize>huge</maxmessagesize>\n"
        '<handlerchain>\n<handler class="NoSuchHandler"/>\n</handlerchain>\n'
        "</smtpserver>\n</smtpservers>\n")
    (conf / "dnsservice.xml").write_text(NO_DNS)
    (conf / "mailetcontainer.xml").write_text(CONTAINER.format(
        mailets='<mailet match="All" class="ToRepository">\n'
                "<repositoryPath>file://var/mail/kept/</repositoryPath>\n"
                "<passThrough>maybe</passThrough>\n</mailet>"))
    smtp, mc = conf / "smtpserver.xml", conf / "mailetcontainer.xml"
    result = check(tmp_path, conf)
    assert result.returncode == 1
    err = result.stderr
    expected = [f"{smtp}:5: connectionLimit: 'many' is not an integer",
                f"{smtp}:6: maxmessagesize: ",
                f"{smtp}:8: handler: no installed handler provides 'NoSuchHandler'",
                f"{mc}:6: mailet ToRepository: passThrough: 'maybe' is not a boolean"]
    for text in expected:
        assert f"chainmail: configuration error: {text}" in err, (text, err)
    assert f"{len(expected)} configuration error(s)" in err
    # ``run`` refuses the same configuration, naming every error of the file
    run = subprocess.run([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode != 0
    assert expected[0] in run.stderr and expected[1] in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_webadmin_properties_are_checked(tmp_path):
    conf = conf_dir(tmp_path, extra={"webadmin.properties": "enabled=true\nport=80x\nhost=127.0.0.1\n"})
    result = check(tmp_path, conf)
    assert result.returncode == 1
    assert "webadmin.properties:2" in result.stderr and "port" in result.stderr
    (tmp_path / "ok").mkdir()
    conf = conf_dir(tmp_path / "ok", extra={"webadmin.properties": "enabled=true\nport=8000\n"})
    result = check(tmp_path / "ok", conf)
    assert "webadmin: http://127.0.0.1:8000 jwt=false" in result.stdout, result.stdout + result.stderr


def test_postgres_properties_are_checked(tmp_path):
    conf = conf_dir(tmp_path, extra={"postgres.properties":
                                     "database.username=james\ndatabase.port=none\n"})
    result = check(tmp_path, conf)
    assert result.returncode == 1
    assert "postgres.properties:2" in result.stderr and "database.port" in result.stderr
    (tmp_path / "ok").mkdir()
    conf = conf_dir(tmp_path / "ok", extra={"postgres.properties":
                                            "database.username=james\npool.size=8\n"})
    result = check(tmp_path / "ok", conf)
    assert "account stores: PostgreSQL james@localhost:5432/postgres schema=public pool=1..8" \
        in result.stdout, result.stdout + result.stderr
