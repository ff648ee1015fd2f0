#!/usr/bin/env bash
# Deep-queue benchmark, all on loopback: N messages for a destination whose server is
# down (it accepts connections and closes them at once). Reports how fast the queue
# fills, sidestep's RSS with the backlog and across retry waves, the connection attempts
# the dead site gets while it is down (what destination health is for), fairness (end
# of DATA -> delivered p99 for a healthy site, without and with the backlog), the
# restart time with the backlog (kill -9, then until the relay listens again), and the
# drain once the site comes back (every message exactly once).
#
#   bash benches/deepqueue.sh [--messages 100000] [--size 4096] [--sessions 20]
#                             [--probe 10s] [--watch 40] [--sidestep PATH]
#                             [--no-drain]   (skip the drain: a million takes ~20 min)
#                             [--benchmail PATH]   (default: built from examples/, release)
#
# Needs dnsmasq-base and python3; mail comes from benchmail (examples/).
set -euo pipefail

MESSAGES=100000
SIZE=4096
SESSIONS=20
PROBE=10s
WATCH=40
DRAIN=yes
SIDESTEP=""
BENCHMAIL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) MESSAGES=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --probe) PROBE=$2; shift 2 ;;
    --watch) WATCH=$2; shift 2 ;;
    --sidestep) SIDESTEP=$2; shift 2 ;;
    --benchmail) BENCHMAIL=$2; shift 2 ;;
    --no-drain) DRAIN=no; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
for tool in dnsmasq python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 2; }
done
if [ -z "$SIDESTEP" ]; then
  (cd "$here/.." && cargo build --release --quiet)
  SIDESTEP="$here/../target/release/sidestep"
fi
if [ -z "$BENCHMAIL" ]; then
  (cd "$here/.." && cargo build --release --quiet --example benchmail)
  BENCHMAIL="$here/../target/release/examples/benchmail"
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
DEAD_PID=$!
PIDS+=("$DEAD_PID")
# A healthy site beside it, for fairness: its mail must not wait behind the backlog.
"$BENCHMAIL" sink --addrs 127.1.1.1 --port "$DEAD_PORT" --status "$WORK/healthy.status" \
  --times "$WORK/healthy.times" 2> "$WORK/healthy.err" &
PIDS+=("$!")
DNS_PORT=$(free_port)
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-dhcp-interface= \
  --listen-address=127.0.0.1 --bind-interfaces --port="$DNS_PORT" --pid-file= --user=root \
  --auth-zone=bench.test --auth-server=ns.bench.test,lo --auth-ttl=300 \
  --mx-host=dead.bench.test,mx.dead.bench.test,10 --host-record=mx.dead.bench.test,127.0.0.1 \
  --mx-host=healthy.bench.test,mx.healthy.bench.test,10 --host-record=mx.healthy.bench.test,127.1.1.1 \
  2>"$WORK/dnsmasq.err" &
PIDS+=("$!")

RELAY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
cat > "$WORK/sidestep.toml" <<TOML
[server]
listen = "127.0.0.1:$RELAY_PORT"
hostname = "relay.bench.test"
max_sessions = 200
[spool]
directory = "$WORK/spool"
[queue]
retry_initial = "10s"
retry_max = "20s"
[delivery]
port = $DEAD_PORT
connect_timeout = "2s"
site_down_after = 5
site_probe_interval = "$PROBE"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
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

# End of DATA -> delivered at the healthy site, 2,000 messages at 200/s.
fairness() {
  "$BENCHMAIL" source --target "127.0.0.1:$RELAY_PORT" --messages 2000 --sessions 4 --rate 200 \
    --domain healthy.bench.test --rcpts 1-1 --min-size "$SIZE" --max-size "$SIZE" \
    --first-id "$1" --times "$WORK/sent.$1" > /dev/null
  sleep 2
  "$BENCHMAIL" latency --sent "$WORK/sent.$1" --delivered "$WORK/healthy.times"
}
p99() { grep -o 'p99 [0-9.]*' <<< "$1" | awk '{ print $2 }'; }

start_relay "$(now)"
alone=$(fairness 10000000)
t0=$(now)
"$BENCHMAIL" source --target "127.0.0.1:$RELAY_PORT" --messages "$MESSAGES" --sessions "$SESSIONS" \
  --domain dead.bench.test --rcpts 1-1 --min-size "$SIZE" --max-size "$SIZE" > "$WORK/source.out"
t1=$(now)
sleep 1
fill=$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
at_fill=$(dead)
rss_fill=$(rss "$RELAY")
behind=$(fairness 20000000)
# The operator's view of the backlog: the queue summary reads every record, one at a time.
summary=$(python3 - "$ADMIN_PORT" <<'PY'
import json, sys, time, urllib.request
t = time.time()
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v1/queue", timeout=600))
print(f"{time.time() - t:.2f} s for {s['messages']} messages")
PY
)
rss_summary=$(rss "$RELAY")
# Retry waves: every message comes due every 10-20 s; sample RSS through them.
rss_max=$rss_fill
for _ in $(seq 1 $((WATCH / 5))); do
  sleep 5
  rss_max=$(awk -v a="$rss_max" -v b="$(rss "$RELAY")" 'BEGIN { print (b > a) ? b : a }')
done
watched=$(( $(dead) - at_fill ))
rss_watch=$(rss "$RELAY")
kill -9 "$RELAY"; wait "$RELAY" 2>/dev/null || true
start_relay "$(now)"
sleep 2
rss_restart=$(rss "$RELAY")
# The site comes back: a real server where the dead one was; its next probe releases all.
if [ "$DRAIN" = yes ]; then
kill "$DEAD_PID"; wait "$DEAD_PID" 2>/dev/null || true
"$BENCHMAIL" sink --addrs 127.0.0.1 --port "$DEAD_PORT" --status "$WORK/back.status" 2> "$WORK/back.err" &
PIDS+=("$!")
t2=$(now)
rss_drain=0
while [ "$(awk '{ print $1 }' "$WORK/back.status" 2>/dev/null || echo 0)" -lt "$MESSAGES" ]; do
  if [ "$(awk -v a="$t2" -v b="$(now)" 'BEGIN { print (b - a > 900) }')" = 1 ]; then
    echo "the revived site got $(cat "$WORK/back.status") of $MESSAGES in 15 minutes" >&2; break
  fi
  rss_drain=$(awk -v a="$rss_drain" -v b="$(rss "$RELAY")" 'BEGIN { print (b > a) ? b : a }')
  sleep 0.5
done
t3=$(now)
sleep 3
read -r back_got back_dups _ < "$WORK/back.status"
fi

echo "sidestep deep-queue benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
echo "messages=$MESSAGES size=$SIZE sessions=$SESSIONS probe=$PROBE retry=10-20s"
echo "fill       ${fill} msg/s accepted; RSS ${rss_fill} MiB with the backlog"
echo "waves      ${WATCH} s of retry waves: RSS at most ${rss_max} MiB, ${rss_watch} MiB after"
echo "summary    GET /api/v1/queue: ${summary}; RSS ${rss_summary} MiB after"
echo "dead site  ${at_fill} connections while filling; ${watched} in the next ${WATCH} s"
echo "fairness   healthy site alone:        $alone"
echo "           with the backlog queued:   $behind"
awk -v a="$(p99 "$alone")" -v b="$(p99 "$behind")" 'BEGIN { printf "           p99 ratio %.2f (goal <= 2)\n", b / a }'
echo "restart    kill -9, listening again after ${READY} s; RSS ${rss_restart} MiB"
[ "$DRAIN" = yes ] && awk -v n="$back_got" -v a="$t2" -v b="$t3" -v d="$back_dups" -v m="$MESSAGES" -v r="$rss_drain" 'BEGIN {
  printf "drain      site back: %d of %d delivered in %.1f s (%.0f msg/s, probe wait included), %d duplicates; RSS at most %s MiB\n",
    n, m, b - a, n / (b - a), d, r }'
grep -c "site marked down" "$WORK/relay.log" | sed 's/^/site marked down (log lines): /'
