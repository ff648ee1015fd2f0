#!/usr/bin/env bash
# End-to-end relay benchmark, all on loopback, in one run:
#   ceiling   smtp-source -> smtp-sink                      (the most this machine can do)
#   sidestep  smtp-source -> sidestep -> smtp-sink          (release build, durable spool, 2 egress IPs)
#   postfix   smtp-source -> Postfix (relayhost) -> smtp-sink
#   kumo-ship smtp-source -> KumoMTA as shipped -> smtp-sink     (with --kumomta PATH)
#   kumo-dur  smtp-source -> KumoMTA, spool synced before the 250 -> smtp-sink
# Same message count, size and concurrency for each. Reports accept rate (until the
# client is done), end-to-end rate (until the sink has every message), peak RSS and CPU
# per message (utime + stime from /proc: the relay's process; for Postfix, its master
# and every process under it, including exited ones through cutime/cstime), the ratios,
# and end-of-DATA -> 250 latency at a fixed offered load.
#
# The realistic scenario then sends through sidestep and Postfix (benchmail, built from
# examples/): 1,000 recipient domains on 100 sites (MX hosts on 127.1.0.1-100, from the
# bench's DNS), 1-5 recipients per message, sizes log-uniform from 2 to 100 KiB, and 10
# sites refusing egress IP 127.0.0.2 with a Spamhaus-style reply. The sink counts every
# (message, recipient) delivery: "exactly once" is checked, not assumed. Postfix has
# the easier job: it cannot move a refused message to another IP, so it sends from the
# IP no site refuses (127.0.0.3). Two Postfix rows: `postfix` routes each domain with
# transport_maps (no DNS: one lookup fewer per delivery than sidestep); `postfix-mx`
# does its own MX lookups through the bench's DNS, as an operator runs it: its smtp
# client runs chrooted (Debian's default) and reads the queue directory's
# etc/resolv.conf, which names a second dnsmasq with the same records on
# 127.0.0.153:53 (resolv.conf has no port; skipped if that address's port 53 is taken).
# No system file is touched. Sending from both IPs (randmap) with refusals retried
# (soft_bounce) left one message on the refused IP for 40 s: Postfix's resolver client
# caches its last answer.
# KumoMTA (--kumomta PATH to a kumod; benches/kumomta/init.lua, configured as its user
# guide describes: RocksDB spool, the same two egress IPs in one pool, MX lookups
# through the bench's DNS, relay for 127.0.0.0/8) sends from both IPs and bounces what
# a site refuses (a 5xx to RCPT is permanent for it): its row counts the bounced
# copies, and "once" means every copy was delivered once or bounced once. Two rows:
# kumo-ship (as shipped: the spool is not synced before the 250) and kumo-dur
# (msg:set_force_sync(true): synced before the 250, as sidestep always does).
# Last, benches/deepqueue.sh (queue fill, RSS, restart, fairness with a backlog).
#
#   bash benches/e2e.sh [--messages 20000] [--size 10240] [--sessions 20]
#                       [--latency-messages 2000] [--latency-rate R] [--sidestep PATH]
#                       [--only PHASE,...]   (ceiling, sidestep, postfix, postfix-mx,
#                                      kumomta (both rows), kumo-ship, kumo-dur)
#                       [--kumomta PATH]   (kumod; adds the KumoMTA rows)
#                       [--rounds N]   (N rounds of the three phases, and the median ratio:
#                                       this VM's speed drifts between minutes)
#                       [--scenario simple|realistic|both] [--real-messages 10000]
#                       [--deep 100000]   (deep-queue messages; 0: skip it)
#                       [--benchmail PATH]   (default: built from examples/, release)
#                       [--spf prefer|require|off]   (sidestep's [delivery] spf, default
#                                      unset = prefer; the sender's SPF authorises both IPs)
#                       [--cluster]   (also: sidestep with [cluster] on a local redis-server,
#                                      in the same rounds; the cost of the shared state)
#
# Needs Debian's postfix (smtp-source, smtp-sink, postfix) and dnsmasq-base, python3, and
# root (Postfix's daemons switch to the postfix user). Everything it starts runs from
# its own temporary directory and is stopped when it exits; the system's Postfix and
# DNS are not touched.
set -euo pipefail

MESSAGES=20000
SIZE=10240
SESSIONS=20
LATENCY_MESSAGES=2000
LATENCY_RATE=""
SIDESTEP=""
KUMOD=""
BENCHMAIL=""
ONLY=""
ROUNDS=1
SCENARIO=both
REAL_MESSAGES=10000
DEEP=100000
CLUSTER=no
SPF=""
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) MESSAGES=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --latency-messages) LATENCY_MESSAGES=$2; shift 2 ;;
    --latency-rate) LATENCY_RATE=$2; shift 2 ;;
    --sidestep) SIDESTEP=$2; shift 2 ;;
    --benchmail) BENCHMAIL=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --scenario) SCENARIO=$2; shift 2 ;;
    --real-messages) REAL_MESSAGES=$2; shift 2 ;;
    --deep) DEEP=$2; shift 2 ;;
    --spf) SPF=$2; shift 2 ;;
    --cluster) CLUSTER=yes; shift ;;
    --kumomta) KUMOD=$2; shift 2 ;;
    -h|--help) sed -n '2,56p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
missing=()
for tool in smtp-source smtp-sink postfix dnsmasq python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install them with: apt-get install postfix dnsmasq-base python3" >&2
  echo "(choose 'No configuration' for Postfix: the benchmark runs its own instance)" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: Postfix's daemons must switch to the postfix user" >&2
  exit 2
fi
if [ -z "$SIDESTEP" ]; then
  (cd "$here/.." && cargo build --release --quiet)
  SIDESTEP="$here/../target/release/sidestep"
fi
if [ -z "$BENCHMAIL" ]; then
  (cd "$here/.." && cargo build --release --quiet --example benchmail)
  BENCHMAIL="$here/../target/release/examples/benchmail"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidestep-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
PF_CONF=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$PF_CONF" ]; then postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true; fi
  wait 2>/dev/null || true
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.1f", n / (b - a) }'; }

SINK_PORT=$(free_port)
SINK_PID=""
start_sink() {
  [ -n "$SINK_PID" ] && { kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; }
  : > "$WORK/sink.out"
  smtp-sink -c -u postfix "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$SINK_PORT"
}
sink_count() {
  tr '\r' '\n' < "$WORK/sink.out" | grep -ao 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2
}
wait_port() {
  for _ in $(seq 1 200); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# One phase: push MESSAGES through host:port, wait for the sink to have them all.
# Prints "accept-rate end-to-end-rate". Runs in a subshell ($(phase ...)), so the sink
# it counts on is started by the caller, in this shell, which alone can stop it.
phase() {
  local target=$1
  local t0 t1 t2
  t0=$(now)
  smtp-source -l "$SIZE" -m "$MESSAGES" -s "$SESSIONS" -f bench@sender.bench.test \
    -t rcpt@dest.bench.test "$target" > "$WORK/source.out" 2>&1 \
    || { echo "smtp-source failed: $(cat "$WORK/source.out")" >&2; return 1; }
  t1=$(now)
  local deadline=$(( $(date +%s) + 900 ))
  while [ "$(sink_count)" != "" ] && [ "$(sink_count)" -lt "$MESSAGES" ] || [ "$(sink_count)" = "" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "the sink got $(sink_count) of $MESSAGES messages in 15 minutes" >&2
      return 1
    fi
    sleep 0.05
  done
  t2=$(now)
  echo "$(rate "$MESSAGES" "$t0" "$t1") $(rate "$MESSAGES" "$t0" "$t2")"
}

# DNS for sidestep: dest.bench.test MX -> the sink on 127.0.0.1; for the realistic
# scenario d0..d999.bench.test MX -> mx.s0..s99.bench.test -> 127.1.0.1..100. Authoritative
# for the zone, so that "no AAAA record" comes with an SOA and is cached, as from real DNS.
SITES=100
DOMAINS=1000
{
  echo "mx-host=dest.bench.test,mx.dest.bench.test,10"
  # The sender's SPF authorises both egress IPs: sidestep evaluates it per (domain, IP).
  echo 'txt-record=sender.bench.test,"v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 -all"'
  echo "host-record=mx.dest.bench.test,127.0.0.1"
  for s in $(seq 0 $((SITES - 1))); do echo "host-record=mx.s$s.bench.test,127.1.0.$((s + 1))"; done
  for d in $(seq 0 $((DOMAINS - 1))); do echo "mx-host=d$d.bench.test,mx.s$((d % SITES)).bench.test,10"; done
} > "$WORK/dnsmasq.conf"
# Postfix's view of the same routes (it cannot be pointed at the bench's DNS server).
for d in $(seq 0 $((DOMAINS - 1))); do
  echo "d$d.bench.test :[127.1.0.$((d % SITES + 1))]:$SINK_PORT"
done > "$WORK/transport"
# One site in ten refuses 127.0.0.2, the way Spamhaus-using receivers do.
REFUSE=$(for s in $(seq 0 10 $((SITES - 1))); do printf "127.1.0.%d=127.0.0.2," $((s + 1)); done)
DNS_PORT=$(free_port)
dnsmasq --keep-in-foreground --conf-file="$WORK/dnsmasq.conf" --no-resolv --no-hosts --no-dhcp-interface= \
  --listen-address=127.0.0.1 --bind-interfaces --port="$DNS_PORT" --pid-file= --user=root \
  --local-ttl=300 --auth-zone=bench.test --auth-server=ns.bench.test,lo --auth-ttl=300 \
  --log-facility="$WORK/dnsmasq.log" 2>"$WORK/dnsmasq.err" &
PIDS+=("$!")

echo "sidestep end-to-end benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "messages=$MESSAGES size=$SIZE sessions=$SESSIONS scenario=$SCENARIO real-messages=$REAL_MESSAGES"

# A phase runs when no --only is given or when the comma list names it.
wants() { [ -z "$ONLY" ] || case ",$ONLY," in *",$1,"*) true ;; *) false ;; esac; }
# The KumoMTA rows run with --kumomta; --only kumomta means both.
wants_kumo() { [ -n "$KUMOD" ] && { wants kumomta || wants "$1"; }; }
scenario() { [ "$SCENARIO" = both ] || [ "$SCENARIO" = "$1" ]; }

# A fresh sidestep with its own spool; sets S_PID and S_PORT.
S_PID=""
start_sidestep() {
  local extra=${1:-}
  if [ -n "$S_PID" ]; then kill "$S_PID" 2>/dev/null || true; wait "$S_PID" 2>/dev/null || true; fi
  rm -rf "$WORK/sidestep"
  S_PORT=$(free_port)
  mkdir -p "$WORK/sidestep"
  cat > "$WORK/sidestep/sidestep.toml" <<TOML
[server]
listen = "127.0.0.1:$S_PORT"
hostname = "relay.bench.test"
relay_networks = ["127.0.0.0/8"]
max_sessions = 1000
[spool]
directory = "$WORK/sidestep/spool"
[queue]
retry_initial = "1s"
retry_max = "5s"
[delivery]
port = $SINK_PORT
max_connections = 100
max_connections_per_domain = 40
$( [ -n "$SPF" ] && echo "spf = \"$SPF\"" )
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[admin]
listen = "127.0.0.1:0"
[[pools]]
name = "default"
[[pools.egress]]
ip = "127.0.0.2"
helo = "out2.bench.test"
[[pools.egress]]
ip = "127.0.0.3"
helo = "out3.bench.test"
$extra
TOML
  RUST_LOG=${BENCH_LOG:-info} "$SIDESTEP" serve --config "$WORK/sidestep/sidestep.toml" \
    > "$WORK/sidestep/out.log" 2> "$WORK/sidestep/relay.log" &
  S_PID=$!
  PIDS+=("$S_PID")
  wait_port "$S_PORT"
}
# One process's peak RSS (MiB) and CPU per message (µs): utime + stime in clock ticks
# (fields 14 and 15; the name has no spaces), all its threads. $1: pid, $2: messages.
proc_usage() {
  U_RSS=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status")
  U_CPU=$(awk -v hz="$(getconf CLK_TCK)" -v n="$2" '{ printf "%.0f", ($14 + $15) * 1e6 / hz / n }' "/proc/$1/stat")
  # The kernel's share (system calls: sockets, fdatasync) on stderr, beside the rows.
  awk -v hz="$(getconf CLK_TCK)" -v n="$2" -v pid="$1" \
    '{ printf "pid %s: user %.0f µs, system %.0f µs per message\n", pid, $14 * 1e6 / hz / n, $15 * 1e6 / hz / n }' \
    "/proc/$1/stat" >&2
}
sidestep_usage() { proc_usage "$S_PID" "$1"; S_RSS=$U_RSS; S_CPU=$U_CPU; }

# A fresh kumod with its own spool (benches/kumomta/init.lua); sets K_PID and K_PORT.
# $1: ship (as shipped) or dur (spool synced before the 250).
K_PID=""
start_kumo() {
  stop_kumo
  rm -rf "$WORK/kumo"
  mkdir -p "$WORK/kumo"
  K_PORT=$(free_port)
  K_HTTP=$(free_port)
  BENCH_KUMO_DIR="$WORK/kumo" BENCH_KUMO_LISTEN="127.0.0.1:$K_PORT" BENCH_KUMO_HTTP="127.0.0.1:$K_HTTP" \
    BENCH_DNS="127.0.0.1:$DNS_PORT" BENCH_SINK_PORT="$SINK_PORT" BENCH_KUMO_SYNC=$([ "$1" = dur ] && echo 1 || echo 0) \
    KUMOD_LOG=${BENCH_KUMO_LOG:-kumod=warn} \
    "$KUMOD" --policy "$here/kumomta/init.lua" --user root > "$WORK/kumo/out.log" 2> "$WORK/kumo/diag.log" &
  K_PID=$!
  PIDS+=("$K_PID")
  wait_port "$K_PORT" || { echo "kumod did not start: $(tail -5 "$WORK/kumo/diag.log")" >&2; exit 1; }
}
stop_kumo() {
  [ -n "$K_PID" ] || return 0
  kill "$K_PID" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$K_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$K_PID" 2>/dev/null || true
  wait "$K_PID" 2>/dev/null || true
  K_PID=""
}
kumo_usage() { proc_usage "$K_PID" "$1"; K_RSS=$U_RSS; K_CPU=$U_CPU; }
# A counter from kumod's Prometheus metrics, summed over its label sets ($1: the metric
# and its labels as they appear, e.g. 'total_messages_fail{service="smtp_client"}').
kumo_metric() {
  python3 - "127.0.0.1:$K_HTTP" "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(sys.argv[2] + " "))))
PY
}

# CPU of a process tree in microseconds per message: utime + stime of the process and
# of every live descendant, plus cutime + cstime (children that exited and were
# reaped). For Postfix, the tree under master: smtpd, cleanup, qmgr, smtp, ...
tree_cpu() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = int(sys.argv[1]), int(sys.argv[2])
stats = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            s = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()  # f[1] = ppid, f[11:15] = utime stime cutime cstime
        stats[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))
tree, grew = {root}, True
while grew:
    more = {p for p, (pp, _) in stats.items() if pp in tree and p not in tree}
    tree |= more
    grew = bool(more)
ticks = sum(stats[p][1] for p in tree if p in stats)
print(f"{ticks * 1e6 / os.sysconf('SC_CLK_TCK') / n:.0f}")
PY
}
postfix_usage() {
  P_CPU=$(tree_cpu "$(awk '{ print $1 }' "$PF/queue/pid/master.pid")" "$1")
}

# The bench's DNS on port 53 for Postfix (resolv.conf names no port): a second dnsmasq
# with the same records on 127.0.0.153:53, started once. Returns 1 (and says why) when
# that address and port cannot be bound.
DNS53=127.0.0.153
DNS53_PID=""
start_dns53() {
  [ -n "$DNS53_PID" ] && return 0
  dnsmasq --keep-in-foreground --conf-file="$WORK/dnsmasq.conf" --no-resolv --no-hosts --no-dhcp-interface= \
    --listen-address=$DNS53 --bind-interfaces --port=53 --pid-file= --user=root \
    --local-ttl=300 --auth-zone=bench.test --auth-server=ns.bench.test,lo --auth-ttl=300 \
    --log-facility="$WORK/dnsmasq53.log" 2>"$WORK/dnsmasq53.err" &
  DNS53_PID=$!
  PIDS+=("$DNS53_PID")
  for _ in $(seq 1 40); do
    if ! kill -0 "$DNS53_PID" 2>/dev/null; then
      DNS53_WHY="dnsmasq on $DNS53 port 53: $(head -c 200 "$WORK/dnsmasq53.err")"
      return 1
    fi
    python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
q = b'\\xab\\xcd\\x01\\x00\\x00\\x01' + bytes(6) + b'\\x02d0\\x05bench\\x04test\\x00\\x00\\x0f\\x00\\x01'
s.sendto(q, ('$DNS53', 53)); s.recv(512)" 2>/dev/null && return 0
    sleep 0.05
  done
  DNS53_WHY="dnsmasq on $DNS53 port 53 does not answer"
  return 1
}

# A private Postfix; `realistic` routes by transport_maps from the clean IP,
# `realistic-mx` by its own MX lookups (chrooted smtp client, resolv.conf in the
# queue directory naming the bench's DNS on port 53), else relayhost.
PF_PORT=""
start_postfix() {
  local mode=$1
  PF_PORT=$(free_port)
  PF="$WORK/postfix-$mode-$ROUND"
  PF_CONF="$PF/conf"
  mkdir -p "$PF_CONF" "$PF/queue" "$PF/data"
  chown postfix "$PF/data"
  cat > "$PF_CONF/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.bench.test
myorigin = pf.bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
smtp_tls_security_level = none
smtpd_tls_security_level = none
CF
  awk -v port="$PF_PORT" -v mode="$mode" 'BEGIN { OFS = "  " }
    /^[^ #\t]/ { if ($1 == "smtp" && $2 == "inet") $1 = "127.0.0.1:" port; if ($5 == "y") $5 = "n"
                  if (mode == "realistic-mx" && $1 == "smtp" && $2 == "unix") $5 = "y" }
    { print }' /etc/postfix/master.cf > "$PF_CONF/master.cf"
  if [ "$mode" = realistic-mx ]; then
    # The chrooted smtp client's resolver reads the jail's etc/resolv.conf.
    mkdir -p "$PF/queue/etc"
    echo "nameserver $DNS53" > "$PF/queue/etc/resolv.conf"
    cp /etc/localtime "$PF/queue/etc/" 2>/dev/null || true
    cat >> "$PF_CONF/main.cf" <<CF
smtp_host_lookup = dns
smtp_tcp_port = $SINK_PORT
smtp_bind_address = 127.0.0.3
smtp_helo_name = out3.bench.test
CF
  elif [ "$mode" = realistic ]; then
    cp "$WORK/transport" "$PF_CONF/transport"
    cat >> "$PF_CONF/main.cf" <<CF
transport_maps = texthash:$PF_CONF/transport
smtp_bind_address = 127.0.0.3
smtp_helo_name = out3.bench.test
CF
  else
    echo "relayhost = [127.0.0.1]:$SINK_PORT" >> "$PF_CONF/main.cf"
  fi
  postfix -c "$PF_CONF" start >/dev/null 2>&1 || { echo "postfix failed to start: $(cat "$PF/maillog" 2>/dev/null)" >&2; exit 1; }
  wait_port "$PF_PORT"
}
stop_postfix() {
  postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
  PF_CONF=""
}

# The realistic scenario's sink (benchmail) on the 100 site addresses.
REAL_SINK_PID=""
start_real_sink() {
  [ -n "$REAL_SINK_PID" ] && { kill "$REAL_SINK_PID" 2>/dev/null || true; wait "$REAL_SINK_PID" 2>/dev/null || true; }
  rm -f "$WORK/real.status"
  "$BENCHMAIL" sink --addrs "127.1.0.1-127.1.0.$SITES" --port "$SINK_PORT" \
    --status "$WORK/real.status" --refuse "$REFUSE" 2> "$WORK/real-sink.err" &
  REAL_SINK_PID=$!
  PIDS+=("$REAL_SINK_PID")
  for _ in $(seq 1 200); do [ -s "$WORK/real.status" ] && return 0; sleep 0.05; done
  echo "the realistic sink did not start: $(cat "$WORK/real-sink.err")" >&2
  return 1
}
real_status() { cat "$WORK/real.status" 2>/dev/null || echo "0 0 0 0"; }

# One realistic phase through host:port. Prints "accept-rate end-to-end-rate deliveries
# expected duplicates refusals": the end is when the sink has every accepted recipient's
# copy (with $2 = bounces: every copy it did not refuse; a relay that bounces refused
# recipients delivers that many fewer); three seconds later, the count must still be
# exact (nothing twice).
real_phase() {
  local target=$1 mode=${2:-} t0 t1 t2 expected
  t0=$(now)
  "$BENCHMAIL" source --target "$target" --messages "$REAL_MESSAGES" --sessions "$SESSIONS" \
    --domains "$DOMAINS" --rcpts 1-5 --min-size 2048 --max-size 102400 > "$WORK/real-source.out" 2>&1 \
    || { echo "benchmail source failed: $(cat "$WORK/real-source.out")" >&2; return 1; }
  t1=$(now)
  expected=$(grep -o 'expected deliveries [0-9]*' "$WORK/real-source.out" | awk '{ print $3 }')
  local deadline=$(( $(date +%s) + 900 ))
  while [ "$(real_status | awk -v m="$mode" '{ print $1 + (m == "bounces" ? $4 : 0) }')" -lt "$expected" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "the sink got $(real_status) of $expected deliveries in 15 minutes" >&2
      return 1
    fi
    sleep 0.05
  done
  t2=$(now)
  sleep 3
  read -r got dups _ refusals <<< "$(real_status)"
  echo "$(rate "$REAL_MESSAGES" "$t0" "$t1") $(rate "$REAL_MESSAGES" "$t0" "$t2") $got $expected $dups $refusals"
}
once() { if [ "$3" -eq 0 ] && [ "$1" -eq "$2" ]; then echo "exactly once"; else echo "NOT EXACTLY ONCE"; fi; }

RATIOS_P=()
RATIOS_C=()
RATIOS_R=()
for ROUND in $(seq 1 "$ROUNDS"); do
[ "$ROUNDS" -eq 1 ] || echo "round $ROUND of $ROUNDS"

if scenario simple; then
# --- ceiling ---
if wants ceiling; then
start_sink
read -r C_ACCEPT C_E2E <<< "$(phase "127.0.0.1:$SINK_PORT")"
printf "%-9s accept %9s msg/s   end-to-end %9s msg/s\n" ceiling "$C_ACCEPT" "$C_E2E"
fi

# --- sidestep (a fresh instance and spool each round; the last one stays for latency) ---
if wants sidestep; then
start_sidestep
start_sink
read -r S_ACCEPT S_E2E <<< "$(phase "127.0.0.1:$S_PORT")"
sidestep_usage "$MESSAGES"
printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   peak RSS %s MiB   CPU %s us/msg\n" sidestep "$S_ACCEPT" "$S_E2E" "$S_RSS" "$S_CPU"
fi

# --- sidestep with [cluster] (a fresh redis-server each round) ---
if [ "$CLUSTER" = yes ] && wants sidestep; then
  command -v redis-server >/dev/null || { echo "--cluster needs redis-server (apt-get install redis-server)" >&2; exit 2; }
  R_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$R_PORT" --save "" --appendonly no > "$WORK/redis.log" 2>&1 &
  R_PID=$!
  PIDS+=("$R_PID")
  wait_port "$R_PORT"
  start_sidestep "$(printf '[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode = "bench"\n' "$R_PORT")"
  start_sink
  read -r K_ACCEPT K_E2E <<< "$(phase "127.0.0.1:$S_PORT")"
  sidestep_usage "$MESSAGES"
  K_OPS=$(redis-cli -p "$R_PORT" info commandstats 2>/dev/null | awk -F'[=,]' '/^cmdstat_/ { n += $2 } END { print n + 0 }')
  printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   peak RSS %s MiB   CPU %s us/msg   Redis commands: %s\n" cluster "$K_ACCEPT" "$K_E2E" "$S_RSS" "$S_CPU" "$K_OPS"
  awk -v k="$K_E2E" -v s="$S_E2E" 'BEGIN { printf "ratios    cluster/sidestep %.2f end-to-end (goal >= 0.90)\n", k / s }'
  kill "$R_PID" 2>/dev/null || true
fi

# --- postfix ---
if wants postfix; then
start_postfix simple
start_sink
read -r P_ACCEPT P_E2E <<< "$(phase "127.0.0.1:$PF_PORT")"
postfix_usage "$MESSAGES"
printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   CPU %s us/msg (master and its processes)\n" postfix "$P_ACCEPT" "$P_E2E" "$P_CPU"
stop_postfix
fi

# --- KumoMTA as shipped, then with its spool synced before the 250 (fresh each) ---
for KMODE in ship dur; do
  wants_kumo "kumo-$KMODE" || continue
  start_kumo "$KMODE"
  start_sink
  read -r K_ACCEPT K_E2E <<< "$(phase "127.0.0.1:$K_PORT")"
  kumo_usage "$MESSAGES"
  printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   peak RSS %s MiB   CPU %s us/msg\n" "kumo-$KMODE" "$K_ACCEPT" "$K_E2E" "$K_RSS" "$K_CPU"
  stop_kumo
  if [ "$KMODE" = dur ] && [ -n "${S_E2E:-}" ]; then
    awk -v s="$S_E2E" -v k="$K_E2E" -v sc="$S_CPU" -v kc="$K_CPU" 'BEGIN {
      printf "ratios    sidestep/kumo-dur %.2f end-to-end   CPU per message kumo-dur/sidestep %.2f\n", s / k, kc / sc }'
  fi
done
if [ -z "$ONLY" ]; then
awk -v s="$S_E2E" -v p="$P_E2E" -v c="$C_E2E" -v sa="$S_ACCEPT" -v pa="$P_ACCEPT" -v ca="$C_ACCEPT" 'BEGIN {
  printf "ratios    sidestep/postfix %.2f end-to-end (%.2f accept)   sidestep/ceiling %.2f end-to-end (%.2f accept)\n",
    s / p, sa / pa, s / c, sa / ca }'
RATIOS_P+=("$(awk -v s="$S_E2E" -v p="$P_E2E" 'BEGIN { printf "%.2f", s / p }')")
RATIOS_C+=("$(awk -v s="$S_E2E" -v c="$C_E2E" 'BEGIN { printf "%.2f", s / c }')")
fi
fi

if scenario realistic; then
echo "realistic: $REAL_MESSAGES messages, $DOMAINS domains on $SITES sites, 1-5 recipients, 2-100 KiB, 10 sites refuse 127.0.0.2"
if wants sidestep; then
start_sidestep
start_real_sink
read -r SR_ACCEPT SR_E2E SR_GOT SR_EXP SR_DUP _ <<< "$(real_phase "127.0.0.1:$S_PORT")"
sidestep_usage "$REAL_MESSAGES"
SR_CPU=$S_CPU
SR_REROUTED=$(grep -c "verdict=ip-reputation" "$WORK/sidestep/relay.log" || true)
printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   peak RSS %s MiB   CPU %s us/msg   %s/%s deliveries, %s duplicates: %s; %s refusals rerouted\n" \
  sidestep "$SR_ACCEPT" "$SR_E2E" "$S_RSS" "$S_CPU" "$SR_GOT" "$SR_EXP" "$SR_DUP" "$(once "$SR_GOT" "$SR_EXP" "$SR_DUP")" "$SR_REROUTED"
fi
if wants postfix; then
start_postfix realistic
start_real_sink
read -r PR_ACCEPT PR_E2E PR_GOT PR_EXP PR_DUP _ <<< "$(real_phase "127.0.0.1:$PF_PORT")"
postfix_usage "$REAL_MESSAGES"
PR_CPU=$P_CPU
printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   CPU %s us/msg   %s/%s deliveries, %s duplicates: %s (from the clean IP only; transport_maps)\n" \
  postfix "$PR_ACCEPT" "$PR_E2E" "$PR_CPU" "$PR_GOT" "$PR_EXP" "$PR_DUP" "$(once "$PR_GOT" "$PR_EXP" "$PR_DUP")"
stop_postfix
fi
PM_CPU=""
if wants postfix-mx; then
  if start_dns53; then
    start_postfix realistic-mx
    start_real_sink
    read -r PM_ACCEPT PM_E2E PM_GOT PM_EXP PM_DUP _ <<< "$(real_phase "127.0.0.1:$PF_PORT")"
    postfix_usage "$REAL_MESSAGES"
    PM_CPU=$P_CPU
    printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   CPU %s us/msg   %s/%s deliveries, %s duplicates: %s (from the clean IP only; its own MX lookups)\n" \
      postfix-mx "$PM_ACCEPT" "$PM_E2E" "$PM_CPU" "$PM_GOT" "$PM_EXP" "$PM_DUP" "$(once "$PM_GOT" "$PM_EXP" "$PM_DUP")"
    stop_postfix
  else
    echo "postfix-mx skipped: $DNS53_WHY"
  fi
fi
KD_CPU=""
for KMODE in ship dur; do
  wants_kumo "kumo-$KMODE" || continue
  start_kumo "$KMODE"
  start_real_sink
  read -r KR_ACCEPT KR_E2E KR_GOT KR_EXP KR_DUP KR_REF <<< "$(real_phase "127.0.0.1:$K_PORT" bounces)"
  kumo_usage "$REAL_MESSAGES"
  KR_BOUNCED=$(kumo_metric 'total_messages_fail{service="smtp_client"}')
  KR_TEMP=$(kumo_metric 'total_messages_transfail{service="smtp_client"}')
  # Once: every copy delivered once or bounced once, and a bounce for each refusal.
  if [ "$KR_DUP" -eq 0 ] && [ $((KR_GOT + KR_BOUNCED)) -eq "$KR_EXP" ] && [ "$KR_BOUNCED" -eq "$KR_REF" ]; then
    KR_ONCE="once: delivered or bounced"
  else
    KR_ONCE="NOT EXACTLY ONCE"
  fi
  printf "%-9s accept %9s msg/s   end-to-end %9s msg/s   peak RSS %s MiB   CPU %s us/msg   %s/%s deliveries, %s bounced (%s refusals), %s temporary failures, %s duplicates: %s\n" \
    "kumo-$KMODE" "$KR_ACCEPT" "$KR_E2E" "$K_RSS" "$K_CPU" "$KR_GOT" "$KR_EXP" "$KR_BOUNCED" "$KR_REF" "$KR_TEMP" "$KR_DUP" "$KR_ONCE"
  [ "$KMODE" = dur ] && KD_CPU=$K_CPU
  stop_kumo
done
if [ -n "${SR_CPU:-}" ] && wants sidestep; then
  awk -v s="$SR_CPU" -v p="${PR_CPU:-}" -v m="$PM_CPU" -v k="$KD_CPU" 'BEGIN {
    line = sprintf("CPU       realistic, per message: sidestep %d us", s)
    if (m != "") line = line sprintf("; postfix-mx/sidestep %.1fx (goal >= 10)", m / s)
    if (p != "") line = line sprintf("; postfix/sidestep %.1fx", p / s)
    if (k != "") line = line sprintf("; kumo-dur/sidestep %.2fx (goal > 1)", k / s)
    print line }'
fi
if [ -z "$ONLY" ]; then
awk -v s="$SR_E2E" -v p="$PR_E2E" 'BEGIN { printf "ratios    realistic sidestep/postfix %.2f end-to-end\n", s / p }'
RATIOS_R+=("$(awk -v s="$SR_E2E" -v p="$PR_E2E" 'BEGIN { printf "%.2f", s / p }')")
fi
fi
done

median() { printf "%s\n" "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
if [ -z "$ONLY" ] && [ "$ROUNDS" -gt 1 ]; then
  scenario simple && echo "median    sidestep/postfix $(median "${RATIOS_P[@]}") end-to-end   sidestep/ceiling $(median "${RATIOS_C[@]}") end-to-end   (rounds: ${RATIOS_P[*]} / ${RATIOS_C[*]})"
  scenario realistic && echo "median    realistic sidestep/postfix $(median "${RATIOS_R[@]}") end-to-end   (rounds: ${RATIOS_R[*]})"
fi

# --- latency: end of DATA -> 250 at a fixed offered load (default: half the measured rate) ---
if [ "$LATENCY_MESSAGES" -gt 0 ] && wants sidestep && scenario simple; then
  start_sidestep
  [ -n "$LATENCY_RATE" ] || LATENCY_RATE=$(awk -v r="$S_ACCEPT" 'BEGIN { printf "%.0f", r / 2 }')
  start_sink
  python3 "$here/latency.py" --port "$S_PORT" --rate "$LATENCY_RATE" \
    --messages "$LATENCY_MESSAGES" --size "$SIZE" --sessions "$SESSIONS"
fi

# --- deep queue: fill, RSS, restart, fairness with a backlog ---
if [ "$DEEP" -gt 0 ] && [ -z "$ONLY" ]; then
  bash "$here/deepqueue.sh" --messages "$DEEP" --sidestep "$SIDESTEP" --benchmail "$BENCHMAIL"
fi
