#!/bin/bash
# Haraka 3.3.4 as a benchmark peer, in the foreground (exec: the PID is the server).
#
#   haraka.sh --install        install Haraka with npm into $PEERS_HOME (needs the npm registry)
#   haraka.sh --check          exit 0 when Haraka is installed (prints where), 1 otherwise
#   haraka.sh PORT MODE --run DIR [--dir MAILDIR] [--tls CERT KEY] [--count-file FILE]
#
# MODE discard: accept and drop. MODE maildir: write each message to MAILDIR/tmp, fsync it, rename
# it into MAILDIR/new and fsync new/ before answering 250 (the durability of a fsyncing spool).
# DIR holds the instance's config (copied from haraka-template/ next to this script). Binds
# 127.0.0.1:PORT only; the local domain is bench.test (config/host_list). On SIGUSR2 the bench_queue
# plugin writes "<seq> <messages queued>" to the count file. Running never installs anything: the
# benchmark runs without network access. Needs node >= 20.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/chainmail-peers}
HARAKA_BIN=$PEERS_HOME/haraka/node_modules/Haraka/bin/haraka
case ${1:-} in
  --install)
    mkdir -p "$PEERS_HOME/haraka"
    cp "$HERE/haraka-package.json" "$PEERS_HOME/haraka/package.json"
    cd "$PEERS_HOME/haraka" && exec npm install --no-audit --no-fund --loglevel=error;;
  --check)
    if [ -f "$HARAKA_BIN" ] && command -v node >/dev/null; then echo "$HARAKA_BIN"; exit 0; fi
    exit 1;;
esac
PORT=${1:?port}; MODE=${2:?mode}; shift 2
TLS=0; MDIR=; RUN=; CERT=; KEY=; COUNT=
while [ $# -gt 0 ]; do
  case $1 in
    --tls) TLS=1; CERT=$2; KEY=$3; shift 2;;
    --dir) MDIR=$2; shift;;
    --run) RUN=$2; shift;;
    --count-file) COUNT=$2; shift;;
    *) echo "bad arg $1" >&2; exit 2;;
  esac
  shift
done
[ -n "$RUN" ] || { echo "--run DIR is required" >&2; exit 2; }
[ -f "$HARAKA_BIN" ] || { echo "Haraka is not installed: $0 --install" >&2; exit 3; }
MDIR=${MDIR:-$RUN/Maildir}
rm -rf "$RUN/config" "$RUN/plugins"; mkdir -p "$RUN"
cp -r "$HERE/haraka-template/config" "$HERE/haraka-template/plugins" "$RUN/"
echo "listen=127.0.0.1:$PORT" >> "$RUN/config/smtp.ini"
sed -i "s/^level=.*/level=${HARAKA_LOGLEVEL:-warn}/" "$RUN/config/log.ini"
{ [ $TLS = 1 ] && echo tls; echo bench_rdns; echo rcpt_to.in_host_list; echo bench_queue; } > "$RUN/config/plugins"
if [ $TLS = 1 ]; then cp "$CERT" "$RUN/config/tls_cert.pem"; cp "$KEY" "$RUN/config/tls_key.pem"; fi
case $MODE in
  discard) ;;
  maildir) sed -i "s|^mode=.*|mode=maildir|; s|^dir=.*|dir=$MDIR|; s|^fsync=.*|fsync=true|" "$RUN/config/bench_queue.ini";;
  *) echo "bad mode $MODE" >&2; exit 2;;
esac
[ -z "$COUNT" ] || sed -i "s|^count_file=.*|count_file=$COUNT|" "$RUN/config/bench_queue.ini"
cd "$RUN"
exec node "$HARAKA_BIN" -c "$RUN"
