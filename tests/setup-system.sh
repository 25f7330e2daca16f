#!/usr/bin/env bash
# The system tools the tests drive as real clients and peers: swaks (with the Perl modules for
# --tls and --auth), Postfix's smtp-source/smtp-sink/sendmail, HAProxy, openssl, curl and ip,
# the spam filters the spam-check handlers talk to (SpamAssassin's spamd, rspamd), Dovecot's
# LMTP server, the mail store LMTPDelivery delivers to, PostgreSQL's server, which the
# PostgreSQL store tests start on their own data directory, and RabbitMQ's, which the
# broker tests start as a node of their own.
# Installs what is missing when run as root on a machine with apt-get; otherwise prints one
# line saying how to install it, and fails.  Never leaves a Postfix, HAProxy, spamd, rspamd,
# Dovecot, PostgreSQL or RabbitMQ service running: the tests start their own, on loopback.
set -euo pipefail

# Debian package -> how to tell it is usable (a command, a Perl module, or an executable file).
checks=(
  "swaks:cmd:swaks"
  "libnet-ssleay-perl:perl:Net::SSLeay"
  "libio-socket-ssl-perl:perl:IO::Socket::SSL"
  "libauthen-sasl-perl:perl:Authen::SASL"
  "postfix:cmd:smtp-source"
  "haproxy:cmd:haproxy"
  "openssl:cmd:openssl"
  "curl:cmd:curl"
  "iproute2:cmd:ip"
  "spamd:cmd:spamd"
  "spamassassin:cmd:spamassassin"
  "rspamd:cmd:rspamd"
  "dovecot-core:cmd:/usr/sbin/dovecot"
  "dovecot-lmtpd:file:/usr/lib/dovecot/lmtp"
  "postgresql:cmd:/usr/lib/postgresql/15/bin/postgres"
  "rabbitmq-server:file:/usr/lib/rabbitmq/bin/rabbitmq-server"
)

have() {
  local kind=$1 what=$2
  case $kind in
    cmd) PATH="$PATH:/usr/sbin:/sbin" command -v "$what" >/dev/null 2>&1 ;;
    perl) perl -M"$what" -e 1 >/dev/null 2>&1 ;;
    file) [ -x "$what" ] ;;
  esac
}

# Whatever the package scripts start (or an earlier install left running) is stopped on the
# way out, installed now or not.
stop_services() {
  if [ "$(id -u)" = 0 ]; then
    postfix stop >/dev/null 2>&1 || true
    service haproxy stop >/dev/null 2>&1 || true
    service spamd stop >/dev/null 2>&1 || true
    service spamassassin stop >/dev/null 2>&1 || true
    service rspamd stop >/dev/null 2>&1 || true
    service dovecot stop >/dev/null 2>&1 || true
    service postgresql stop >/dev/null 2>&1 || true
    service rabbitmq-server stop >/dev/null 2>&1 || true
    # the package's scripts start epmd on its default port; the tests run their own
    epmd -kill >/dev/null 2>&1 || true
  fi
}
trap stop_services EXIT

missing=()
for check in "${checks[@]}"; do
  IFS=: read -r package kind what <<<"$check"
  have "$kind" "$what" || missing+=("$package")
done
((${#missing[@]})) || exit 0

install="apt-get install -y --no-install-recommends ${missing[*]}"
preseed='echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections && apt-get update'
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "make test needs ${missing[*]}: install them as root with: $preseed && $install" \
       "(or run make test as root on Debian, which does it)" >&2
  exit 1
fi

echo "installing the tools the tests use: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Postfix only for its tools (smtp-source, smtp-sink): no configuration, no daemon.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
