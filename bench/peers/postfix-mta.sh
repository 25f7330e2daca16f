#!/bin/bash
# Postfix 3.7 as a full MTA peer, in the foreground (postfix start-fg): smtpd -> cleanup (queue
# file fsynced before 250) -> qmgr -> virtual(8) delivery into Maildirs (fsynced). Each recipient
# rcpt@, 2rcpt@ ... 50rcpt@bench.test gets its own Maildir, DIR/mail/<name>/. A private instance: its own configuration,
# queue and data directories under DIR; the system Postfix is never touched or needed.
#
#   postfix-mta.sh HOST PORT DIR [--tls CERT KEY]     (needs root and the postfix package)
#
# --tls offers STARTTLS with that certificate and key. No DNS: disable_dns_lookups, no peer name
# lookups, and every destination other than bench.test is an error transport.
set -e
HOST=$1; PORT=$2; D=$3; shift 3
CERT=; KEY=
while [ $# -gt 0 ]; do
  case $1 in
    --tls) CERT=$2; KEY=$3; shift 3;;
    *) echo "bad arg $1" >&2; exit 2;;
  esac
done
mkdir -p "$D"; D=$(cd "$D" && pwd)
rm -rf "$D/etc" "$D/spool" "$D/data" "$D/mail"
mkdir -p "$D/etc" "$D/spool" "$D/data" "$D/mail"
chown postfix:postfix "$D/data"; chown 65534:65534 "$D/mail"
cat > "$D/etc/master.cf" <<X
$HOST:$PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
X
# rcpt@bench.test, 2rcpt@bench.test ... 50rcpt@bench.test (smtp-source -r 50) and
# user1@bench.test ... user50@bench.test -> Maildir DIR/mail/<name>/ (the trailing / makes it a
# Maildir). virtual_mailbox_maps allows no regexp substitution, hence the list.
{ echo "rcpt@bench.test rcpt/"
  for i in $(seq 2 50); do echo "${i}rcpt@bench.test ${i}rcpt/"; done
  for i in $(seq 1 50); do echo "user$i@bench.test user$i/"; done; } > "$D/etc/mailboxes"
cat > "$D/etc/main.cf" <<X
compatibility_level = 3.6
config_directory = $D/etc
queue_directory = $D/spool
data_directory = $D/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = $HOST
inet_protocols = ipv4
myhostname = postfix.bench.test
mydomain = bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $D/mail
virtual_mailbox_maps = texthash:$D/etc/mailboxes
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_destination_concurrency_limit = 20
virtual_mailbox_limit = 0
message_size_limit = 0
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
default_process_limit = 200
smtpd_recipient_limit = 1000
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
maillog_file = $D/maillog
maillog_file_prefixes = $D
default_transport = error:bench peer delivers bench.test only
relay_transport = error:bench peer delivers bench.test only
smtputf8_enable = no
biff = no
X
if [ -n "$CERT" ]; then
  cp "$CERT" "$D/etc/cert.pem"; cp "$KEY" "$D/etc/key.pem"; chmod 600 "$D/etc/key.pem"
  cat >> "$D/etc/main.cf" <<X
smtpd_tls_security_level = may
smtpd_tls_chain_files = $D/etc/key.pem, $D/etc/cert.pem
smtpd_tls_session_cache_database =
X
fi
touch "$D/maillog"
postfix -c "$D/etc" check >&2
exec postfix -c "$D/etc" start-fg
