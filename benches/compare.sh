#!/usr/bin/env bash
# Two builds of sidestep on the realistic scenario, alternated in the same minutes, so a
# change on the delivery path is judged against the build it replaces and not against a
# number measured on another day (this VM's speed drifts by 30% between minutes).
#
#   bash benches/compare.sh A B [--rounds 5] [--real-messages 3000] [--sessions 20]
#                               [--keep DIR]   (copy the two binaries there, as DIR/A and DIR/B)
#
# A and B are each a sidestep binary (a path) or a git revision of this repository
# (anything `git rev-parse` takes: main, HEAD~3, a tag); a revision is checked out in a
# temporary worktree and built with `cargo build --release` (a target directory shared by
# both, under target/compare, so the second build only recompiles sidestep itself). The
# benchmark client (benchmail) is built once from the working tree and drives both.
#
# Each round runs A then B, the next B then A (drift within a round falls on both), each
# on a fresh spool through benches/e2e.sh's realistic scenario. It prints every run, then
# per build the median and the spread (min-max) of CPU per message, end-to-end throughput
# and peak RSS, and the ratios B/A of the medians. CPU per message is the number to watch:
# it is the relay's own utime + stime over the run divided by the messages, so it moves
# less with the machine's load than throughput does.
set -euo pipefail

ROUNDS=5
REAL_MESSAGES=3000
SESSIONS=20
KEEP=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --real-messages) REAL_MESSAGES=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ "${#ARGS[@]}" -ne 2 ]; then
  echo "usage: bash benches/compare.sh A B [--rounds N] [--real-messages N]   (see --help)" >&2
  exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidestep-compare.XXXXXX")
TREES=()
cleanup() {
  for t in "${TREES[@]}"; do git -C "$repo" worktree remove --force "$t" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# A binary for one argument: the path itself, or a release build of the revision.
build() {
  local spec=$1 label=$2 rev tree
  if [ -f "$spec" ] && [ -x "$spec" ]; then
    cp "$spec" "$WORK/$label"
    echo "$label: $spec" >&2
    return
  fi
  rev=$(git -C "$repo" rev-parse --verify --quiet "$spec^{commit}") \
    || { echo "$spec is neither an executable nor a revision of $repo" >&2; exit 2; }
  tree="$WORK/tree-$label"
  git -C "$repo" worktree add --detach "$tree" "$rev" >/dev/null 2>&1
  TREES+=("$tree")
  echo "$label: $spec = $(git -C "$repo" log -1 --format='%h %s' "$rev" | cut -c1-72), building" >&2
  (cd "$tree" && CARGO_TARGET_DIR="$repo/target/compare" cargo build --release --locked --quiet)
  cp "$repo/target/compare/release/sidestep" "$WORK/$label"
}
build "${ARGS[0]}" A
build "${ARGS[1]}" B
(cd "$repo" && cargo build --release --locked --quiet --example benchmail)
BENCHMAIL="$repo/target/release/examples/benchmail"
if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$WORK/A" "$WORK/B" "$KEEP/"; fi

# One realistic run; prints "cpu e2e rss deliveries-verdict".
run() {
  local out line
  out=$(bash "$here/e2e.sh" --scenario realistic --only sidestep --deep 0 --latency-messages 0 \
    --real-messages "$REAL_MESSAGES" --sessions "$SESSIONS" \
    --sidestep "$WORK/$1" --benchmail "$BENCHMAIL" 2>&1) || { echo "$out" >&2; return 1; }
  line=$(printf '%s\n' "$out" | awk '/^realistic:/ { r = 1 } r && /^sidestep / { print; exit }')
  [ -n "$line" ] || { echo "no realistic sidestep line in:"; echo "$out"; return 1; } >&2
  # sidestep accept X msg/s end-to-end Y msg/s peak RSS Z MiB CPU W us/msg ... exactly once
  awk '{ for (i = 1; i <= NF; i++) {
           if ($i == "end-to-end") e = $(i + 1); if ($i == "RSS") r = $(i + 1); if ($i == "CPU") c = $(i + 1) }
         v = index($0, "NOT EXACTLY ONCE") ? "NOT-EXACTLY-ONCE" : "exactly-once"
         print c, e, r, v }' <<< "$line"
}

echo "compare: $ROUNDS rounds of the realistic scenario, $REAL_MESSAGES messages, $SESSIONS sessions, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf "%-5s %-5s %12s %14s %10s  %s\n" round build "CPU us/msg" "e2e msg/s" "RSS MiB" deliveries
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for b in $order; do
    result=$(run "$b")
    read -r cpu e2e rss verdict <<< "$result"
    printf "%-5s %-5s %12s %14s %10s  %s\n" "$round" "$b" "$cpu" "$e2e" "$rss" "$verdict"
    echo "$cpu $e2e $rss" >> "$WORK/$b.runs"
  done
done

# Median and spread of column $2 of build $1's runs.
summary() {
  sort -n -k"$2","$2" "$WORK/$1.runs" | awk -v k="$2" '{ v[NR] = $k }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "%s %s %s", m, v[1], v[NR] }'
}
echo
printf "%-5s %26s %28s %24s\n" build "CPU us/msg median (range)" "e2e msg/s median (range)" "RSS MiB median (range)"
for b in A B; do
  read -r cm clo chi <<< "$(summary "$b" 1)"
  read -r em elo ehi <<< "$(summary "$b" 2)"
  read -r rm rlo rhi <<< "$(summary "$b" 3)"
  printf "%-5s %12s (%s-%s) %14s (%s-%s) %10s (%s-%s)\n" "$b" "$cm" "$clo" "$chi" "$em" "$elo" "$ehi" "$rm" "$rlo" "$rhi"
  eval "${b}_CPU=$cm ${b}_E2E=$em ${b}_RSS=$rm"
done
awk -v ac="$A_CPU" -v bc="$B_CPU" -v ae="$A_E2E" -v be="$B_E2E" -v ar="$A_RSS" -v br="$B_RSS" 'BEGIN {
  printf "B/A   CPU per message %.3f   end-to-end %.3f   peak RSS %.3f\n", bc / ac, be / ae, br / ar }'
