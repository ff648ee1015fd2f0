#!/usr/bin/env bash
# Where the relay's CPU goes on the realistic scenario, by stage (accept, spool, schedule,
# route, deliver, classify/learn, bookkeeping), in microseconds per message.
#
#   bash benches/profile.sh [--real-messages 10000] [--sidestep PATH] [--out DIR]
#
# Builds sidestep with frame pointers and line tables (target/profile) unless --sidestep
# names a binary, runs benches/e2e.sh's realistic scenario through it under
# `perf record -a --call-graph dwarf` (499 Hz), and hands the samples of the relay's
# process to benches/stages.py. perf's sampling adds a few percent: compare the total
# with the CPU per message e2e.sh prints in the same run. DIR keeps perf.data and the
# script output (default: a temporary directory, removed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
MESSAGES=10000
SIDESTEP=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --real-messages) MESSAGES=$2; shift 2 ;;
    --sidestep) SIDESTEP=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 2; }
if [ -z "$SIDESTEP" ]; then
  (cd "$here/.." && CARGO_TARGET_DIR=target/profile RUSTFLAGS="-Cforce-frame-pointers=yes" \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --quiet --bin sidestep)
  SIDESTEP="$here/../target/profile/release/sidestep"
fi
(cd "$here/.." && cargo build --release --quiet --example benchmail)
if [ -z "$OUT" ]; then
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/sidestep-profile.XXXXXX")
  trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
perf record -q -F 499 --call-graph dwarf,65528 -a -o "$OUT/perf.data" -- \
  bash "$here/e2e.sh" --scenario realistic --only sidestep --deep 0 --latency-messages 0 \
  --real-messages "$MESSAGES" --sidestep "$SIDESTEP" \
  --benchmail "$here/../target/release/examples/benchmail" | grep '^sidestep '
perf script -i "$OUT/perf.data" -F pid,tid,comm,ip,sym 2>/dev/null > "$OUT/script.txt"
# The relay is the process with the spool's committer thread.
PID=$(awk '/^spool-commit/ { split($2, a, "/"); print a[1]; exit }' "$OUT/script.txt")
[ -n "$PID" ] || { echo "no samples of the relay's spool-commit thread" >&2; exit 1; }
python3 "$here/stages.py" "$PID" "$MESSAGES" 499 < "$OUT/script.txt"
