"""The command line as an operator meets it: one clear line instead of a traceback (a closed
pipe, a port in use, a missing or mistyped directory, a missing keystore), ``--version``, and
log output to a file (reopened on SIGHUP), to syslog, or as JSON lines."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from chainmail import logctx, logsetup
from tests.conftest import CHAINMAIL, DOMAINLIST, NO_DNS, ChainmailProcess, smtpserver_xml

QUEUED_AS = re.compile(r"queued as (\S+)")
QUEUED_LOG = re.compile(r": queued (\S+) from <")


def write_conf(base: Path, body: str = "", **options) -> Path:
    conf = base / "conf"
    conf.mkdir(parents=True)
    (conf / "smtpserver.xml").write_text(
        f"<smtpservers>\n{smtpserver_xml('<jmxName>robust</jmxName>' + body, **options)}"
        "\n</smtpservers>\n")
    (conf / "domainlist.xml").write_text(
        DOMAINLIST.format(names="<domainname>local.test</domainname>", default="local.test"))
    (conf / "dnsservice.xml").write_text(NO_DNS)
    return conf


def cm(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    return subprocess.run([*CHAINMAIL, *args], text=True, timeout=60, cwd=cwd, **kwargs)


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- --version --------------------------------------------------------------------------

def test_version_comes_from_the_package_metadata(tmp_path):
    result = cm("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"chainmail {version('chainmail')}\n", "")


# --- a reader that goes away ------------------------------------------------------------

@pytest.mark.parametrize("command", [["check-config"], ["queue", "list"]])
def test_output_into_a_closed_pipe_ends_quietly_with_141(tmp_path, command):
    conf = write_conf(tmp_path)
    (tmp_path / "var").mkdir()
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader is gone before the first line is written
    try:
        result = cm(*command, "--conf", str(conf), "--var", str(tmp_path / "var"), cwd=tmp_path,
                    stdout=write_end, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_check_config_piped_into_head_prints_no_traceback(tmp_path):
    conf = write_conf(tmp_path)
    result = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "sh", *CHAINMAIL, "check-config",
         "--conf", str(conf)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.stdout == f"# configuration directory {conf}\n"
    assert result.stderr == "" and result.returncode in (0, 141)


# --- a port in use ----------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_line_naming_the_bind(tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = write_conf(tmp_path, f"<ioWorkerCount>{workers}</ioWorkerCount>",
                          bind=f"127.0.0.1:{port}")
        result = cm("run", "--conf", str(conf), "--var", str(tmp_path / "var"), cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert lines == [f"chainmail: {conf / 'smtpserver.xml'}:2: smtpserver 'robust': cannot "
                     f"bind 127.0.0.1:{port}: Address already in use"], result.stderr


# --- missing and mistyped directories ---------------------------------------------------

@pytest.mark.parametrize("command", [["run"], ["check-config"], ["domain", "list"],
                                     ["user", "list"], ["keystore"]])
def test_a_configuration_directory_that_does_not_exist_is_named(tmp_path, command):
    result = cm(*command, "--conf", str(tmp_path / "cnof"), "--var", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"chainmail: configuration directory {tmp_path / 'cnof'} "
                                       "does not exist (--conf)")


def test_the_default_conf_missing_says_to_give_conf(tmp_path):
    result = cm("check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"chainmail: configuration directory {tmp_path / 'conf'} "
                                       "does not exist (the default ./conf; give --conf DIR)")


@pytest.mark.parametrize("command", [["queue", "list"], ["domain", "list"], ["user", "list"],
                                     ["domain", "remove", "local.test"], ["repository", "list"]])
def test_a_mistyped_state_directory_is_refused_not_created(tmp_path, command):
    conf = write_conf(tmp_path)
    (tmp_path / "var").mkdir()
    typo = tmp_path / "vra"
    result = cm(*command, "--conf", str(conf), "--var", str(typo), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"chainmail: state directory {typo} does not exist "
                                       "(--var); chainmail run and the add commands create it")
    assert not typo.exists()


def test_an_add_command_creates_the_state_directory_and_says_so(tmp_path):
    conf = write_conf(tmp_path)
    var = tmp_path / "var"
    result = cm("domain", "add", "example.org", "--conf", str(conf), "--var", str(var),
                cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "added example.org\n")
    assert one_line(result.stderr) == f"chainmail: created state directory {var}"
    result = cm("domain", "list", "--conf", str(conf), "--var", str(var), cwd=tmp_path)
    assert result.returncode == 0 and "example.org" in result.stdout.split()


def test_a_state_directory_is_never_created_with_its_parents(tmp_path):
    conf = write_conf(tmp_path)
    var = tmp_path / "srv" / "var"
    for command in (["domain", "add", "example.org"], ["run"]):
        result = cm(*command, "--conf", str(conf), "--var", str(var), cwd=tmp_path)
        assert result.returncode == 2
        assert one_line(result.stderr) == (f"chainmail: state directory {var} cannot be "
                                           f"created: {var.parent} does not exist (--var)")
    assert not var.parent.exists()


def test_run_creates_the_default_var_on_first_start(tmp_path):
    write_conf(tmp_path)
    proc = subprocess.Popen([*CHAINMAIL, "run"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:   # SIGTERM once it serves: before, the signal's default action would end it
        wait_for(lambda: any("chainmail ready" in line for line in lines), "ready")
        assert (tmp_path / "var" / "spool").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert f"created state directory {tmp_path / 'var'} (first start)" in err


# --- TLS without a keystore -------------------------------------------------------------

def test_run_without_the_keystore_names_chainmail_keystore(tmp_path):
    tls = ('<tls socketTLS="false" startTLS="true"><keystore>file://conf/keystore</keystore>'
           '<keystoreType>PKCS12</keystoreType><secret>changeit</secret></tls>')
    conf = write_conf(tmp_path, tls)
    var = tmp_path / "var"
    result = cm("run", "--conf", str(conf), "--var", str(var), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"chainmail: {conf / 'smtpserver.xml'}:2: smtpserver 'robust': tls/keystore "
        f"{conf / 'keystore'} does not exist; to try TLS out, create a self-signed one with: "
        f"chainmail keystore --conf {conf}; for real use, set <keystore> to your "
        "certificate's PKCS12 file")
    # Doing what it says is enough to start.
    result = cm("keystore", "--conf", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    server = ChainmailProcess(conf, var)
    try:
        with server.smtp() as s:
            s.ehlo()
            assert s.has_extn("starttls")
    finally:
        assert server.stop() == 0


# --- log destinations and formats -------------------------------------------------------

def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path):
    conf = write_conf(tmp_path)
    result = cm("run", "--conf", str(conf), "--log-file", str(tmp_path / "no" / "x.log"),
                cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(
        f"chainmail: cannot open log file {tmp_path / 'no' / 'x.log'}: No such file")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_carry_the_queue_id_of_a_message(chainmail_factory):
    server = chainmail_factory(extra_args=("--log-format", "json"))
    with server.smtp() as s:
        s.ehlo()
        s.mail("a@remote.example")
        s.rcpt("u@local.test")
        code, text = s.data(b"Subject: json\r\n\r\nhello\r\n")
    assert code == 250
    found = QUEUED_AS.search(text.decode())
    queue_id = found.group(1) if found else wait_for(
        lambda: QUEUED_LOG.search(server.log), "the queued log line").group(1)
    lines = wait_for(lambda: [d for d in json_lines(server.log) if d.get("queue_id") == queue_id],
                     f"a log line with queue_id {queue_id}")
    assert any(queue_id in d["message"] for d in lines)
    for doc in json_lines(server.log):
        assert {"time", "level", "logger", "message", "pid"} <= doc.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}([+-]\d\d:\d\d|Z)", doc["time"])


def test_json_formats_an_exception_into_one_line_with_the_queue_id():
    formatter = logsetup.JsonFormatter()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.getLogger("chainmail.t").makeRecord(
            "chainmail.t", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info())
    with logctx.about_message("0123abcd-q"):
        line = formatter.format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "failed x" and doc["level"] == "ERROR"
    assert doc["queue_id"] == "0123abcd-q" and doc["pid"] == os.getpid()
    assert doc["exc"].startswith("Traceback") and "ValueError: bad\nthing" in doc["exc"]
    assert "queue_id" not in json.loads(formatter.format(record))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_log_file_is_reopened_on_sighup(tmp_path, workers):
    conf = write_conf(tmp_path, f"<ioWorkerCount>{workers}</ioWorkerCount>")
    log, rotated = tmp_path / "mail.log", tmp_path / "mail.log.1"
    log.write_text("an earlier line\n")
    proc = subprocess.Popen([*CHAINMAIL, "run", "--conf", str(conf), "--var", str(tmp_path / "var"),
                             "--log-file", str(log), "--log-format", "json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "chainmail ready" in log.read_text(), "chainmail ready in the log file")
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        log.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log.exists() and log.read_text().count("received SIGHUP")
                 >= (1 if workers == 1 else workers + 1), "SIGHUP lines in the new file")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(1024).startswith(b"220 ")   # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert (out, err) == (b"", b"")   # everything went to the file
    old = rotated.read_text()
    assert old.startswith("an earlier line\n") and "SIGHUP" not in old
    new = json_lines(log.read_text())
    assert new[-1]["message"] == "stopped"
    if workers == 2:
        assert {d.get("worker") for d in new} == {None, 0, 1}
        assert len({d["pid"] for d in new}) == 3


def test_syslog_gets_each_event_as_a_datagram_of_facility_mail(tmp_path):
    conf = write_conf(tmp_path, "<ioWorkerCount>1</ioWorkerCount>")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(20)
        address = "127.0.0.1:%d" % collector.getsockname()[1]
        proc = subprocess.Popen([*CHAINMAIL, "run", "--conf", str(conf), "--var",
                                 str(tmp_path / "var"), "--syslog-address", address],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            datagrams = []
            while not any(b"chainmail ready" in d for d in datagrams):
                datagrams.append(collector.recv(65536))
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and (out, err) == (b"", b"")
    ready = next(d for d in datagrams if b"chainmail ready" in d)
    # <22>: facility mail (2) * 8 + severity info (6)
    assert re.fullmatch(rb"<22>chainmail\[%d\]: INFO chainmail\.server: chainmail ready "
                        rb"\(pid %d\)\x00" % (proc.pid, proc.pid), ready), ready
    assert all(d.startswith((b"<22>", b"<20>")) and d.count(b"\n") == 0 for d in datagrams)


def test_syslog_over_a_unix_socket_in_json_lines(tmp_path):
    conf = write_conf(tmp_path, "<ioWorkerCount>2</ioWorkerCount>")
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as collector:
        collector.bind(str(path))
        collector.settimeout(20)
        proc = subprocess.Popen([*CHAINMAIL, "run", "--conf", str(conf), "--var",
                                 str(tmp_path / "var"), "--syslog-address", str(path),
                                 "--log-format", "json"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            events = []
            while not any(e["message"].startswith("chainmail ready") for e in events):
                datagram = collector.recv(65536)
                assert datagram.startswith(b"<22>") and datagram.endswith(b"\x00"), datagram
                events.append(json.loads(datagram[4:-1]))
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and (out, err) == (b"", b"")
    assert {e.get("worker") for e in events} == {None, 0, 1}


def test_a_syslog_socket_nobody_listens_on_is_one_line(tmp_path):
    conf = write_conf(tmp_path)
    result = cm("run", "--conf", str(conf), "--syslog-address", str(tmp_path / "nolog"),
                cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"chainmail: cannot log to syslog at {tmp_path / 'nolog'}: No such file or directory "
        "(is a syslog daemon running? --syslog-address names another socket)")
