#!/usr/bin/env bash
# Deep-queue benchmark, all on loopback: N messages for a destination whose server is
# down (it accepts connections and closes them at once). Reports how fast the queue
# fills, sidestep's RSS with the backlog, the connection attempts the dead site gets
# while it is down (what destination health is for), and the restart time with the
# backlog (kill -9, then until the relay listens again).
#
#   bash benches/deepqueue.sh [--messages 100000] [--size 4096] [--sessions 20]
#                             [--probe 10s] [--watch 30] [--sidestep PATH]
#
# Needs Debian's postfix (for smtp-source), dnsmasq-base and python3.
set -euo pipefail

MESSAGES=100000
SIZE=4096
SESSIONS=20
PROBE=10s
WATCH=30
SIDESTEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) MESSAGES=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --probe) PROBE=$2; shift 2 ;;
    --watch) WATCH=$2; shift 2 ;;
    --sidestep) SIDESTEP=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
for tool in smtp-source dnsmasq python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 2; }
done
if [ -z "$SIDESTEP" ]; then
  (cd "$here/.." && cargo build --release --quiet)
  SIDESTEP="$here/../target/release/sidestep"
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidestep-deepq.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# The dead server: accepts and closes at once, counting connections into a file.
DEAD_PORT=$(free_port)
python3 - "$DEAD_PORT" "$WORK/dead.count" <<'PY' &
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(1024); s.settimeout(0.5)
n, last = 0, 0.0
while True:
    try:
        c, _ = s.accept(); c.close(); n += 1
    except socket.timeout:
        pass
    if time.time() - last > 0.2:
        open(out, "w").write(str(n)); last = time.time()
PY
PIDS+=("$!")
DNS_PORT=$(free_port)
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-dhcp-interface= \
  --listen-address=127.0.0.1 --bind-interfaces --port="$DNS_PORT" --pid-file= --user=root \
  --auth-zone=bench.test --auth-server=ns.bench.test,lo --auth-ttl=300 \
  --mx-host=dead.bench.test,mx.dead.bench.test,10 --host-record=mx.dead.bench.test,127.0.0.1 \
  2>"$WORK/dnsmasq.err" &
PIDS+=("$!")

RELAY_PORT=$(free_port)
cat > "$WORK/sidestep.toml" <<TOML
[server]
listen = "127.0.0.1:$RELAY_PORT"
hostname = "relay.bench.test"
max_sessions = 200
[spool]
directory = "$WORK/spool"
[queue]
retry_initial = "1m"
retry_max = "10m"
[delivery]
port = $DEAD_PORT
connect_timeout = "2s"
site_down_after = 5
site_probe_interval = "$PROBE"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[admin]
listen = ""
[[pools]]
name = "default"
[[pools.egress]]
ip = "127.0.0.2"
[[pools.egress]]
ip = "127.0.0.3"
TOML

start_relay() {
  local t0=$1
  "$SIDESTEP" serve --config "$WORK/sidestep.toml" > "$WORK/relay.out" 2>> "$WORK/relay.log" &
  RELAY=$!
  PIDS+=("$RELAY")
  for _ in $(seq 1 6000); do
    grep -q "sidestep listening on" "$WORK/relay.out" 2>/dev/null && break
    sleep 0.01
  done
  READY=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
}
rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
dead() { cat "$WORK/dead.count" 2>/dev/null || echo 0; }

start_relay "$(now)"
t0=$(now)
smtp-source -l "$SIZE" -m "$MESSAGES" -s "$SESSIONS" -f bench@sender.bench.test \
  -t rcpt@dead.bench.test "127.0.0.1:$RELAY_PORT" > "$WORK/source.out" 2>&1
t1=$(now)
sleep 1
fill=$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
at_fill=$(dead)
rss_fill=$(rss "$RELAY")
sleep "$WATCH"
watched=$(( $(dead) - at_fill ))
rss_watch=$(rss "$RELAY")
kill -9 "$RELAY"; wait "$RELAY" 2>/dev/null || true
start_relay "$(now)"
sleep 2
rss_restart=$(rss "$RELAY")

echo "sidestep deep-queue benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
echo "messages=$MESSAGES size=$SIZE sessions=$SESSIONS probe=$PROBE"
echo "fill       ${fill} msg/s accepted; RSS ${rss_fill} MiB with the backlog"
echo "dead site  ${at_fill} connections while filling; ${watched} in the next ${WATCH} s; RSS ${rss_watch} MiB"
echo "restart    kill -9, listening again after ${READY} s; RSS ${rss_restart} MiB"
grep -c "site marked down" "$WORK/relay.log" | sed 's/^/site marked down (log lines): /'
