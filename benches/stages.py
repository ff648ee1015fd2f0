#!/usr/bin/env python3
"""CPU per message by stage, from a profile of the relay taken with
`perf record --call-graph dwarf` (benches/profile.sh runs both).

    perf script -F pid,tid,comm,ip,sym | python3 benches/stages.py PID MESSAGES HZ [-v]

Each sample of process PID goes to the stage of the frame nearest the leaf that names
one (a log line formatted inside a delivery is bookkeeping, not delivery). Samples whose
user stack ends in glibc (its send, recv and malloc frames do not unwind further) are
counted as what they are, socket I/O or the allocator, without a stage. -v lists the
stacks left over.
"""
import collections
import re
import sys

# (stage, pattern), checked from the leaf up: the first frame matching any decides.
RULES = [
    ("bookkeeping: logs", r"tracing_subscriber|tracing_core|tracing::|log_attempt|Stderr"),
    ("bookkeeping: metrics", r"sidestep::metrics|prometheus"),
    ("bookkeeping: history", r"queue::attempt::(record|apply)|tls_policy::outcomes|departed|suppress::feed|sidestep::senders"),
    ("classify/learn", r"sidestep::classify|queue::domain::(learn|evidence)|reputation::(learn|blocks)"),
    ("deliver", r"sidestep::outbound::(protocol|sessions|reply)|try_host|Outbound::open|Outbound::connect|mail_send|rustls|tokio::net::tcp"),
    ("route", r"lookup_mx|lookup_addresses|sidestep::dns|TlsPolicies|tls_policy::|spf_choice|authorisation|shaping|Shaper|routing::|reputation::|Site::from_mx|hickory|Outbound::deliver|Outbound::route_for"),
    ("schedule", r"queue::scheduler|queue::attempt::(run|attempt|deliver_all|load)|queue::domain|queue::throttle|QueueHandle"),
    ("accept", r"sidestep::inbound"),
    ("spool", r"sidestep::spool|redb::"),
]
RULES = [(name, re.compile(pattern)) for name, pattern in RULES]
ALLOCATOR = re.compile(r"malloc|_int_free|cfree|unlink_chunk|tcache|memalign|realloc|sysmalloc")
SOCKET = re.compile(r"sendto|recvfrom|tcp_|udp_|__libc_send|__libc_recv|sock_|skb|net_rx|softirq|ip_")


def stage(stack, comm):
    for frame in stack:
        for name, rule in RULES:
            if rule.search(frame):
                return name
    if comm.startswith("spool"):
        return "spool"
    if any("tokio::runtime" in f for f in stack):
        return "runtime (tokio: polling, waking, epoll)"
    if any(ALLOCATOR.search(f) for f in stack[:3]):
        return "allocator (caller not unwound)"
    if any(SOCKET.search(f) for f in stack):
        return "socket I/O (caller not unwound)"
    return "other"


def samples(lines, pid):
    """(frames leaf first, thread name) of each sample of process `pid`."""
    stack, comm = None, ""
    for line in lines:
        if not line.strip():
            if stack is not None:
                yield stack, comm
            stack = None
        elif not line[0].isspace():
            parts = line.split()
            comm = parts[0]
            stack = [] if parts[1].split("/")[0] == pid else None
        elif stack is not None:
            p = line.strip().split(None, 1)
            stack.append(p[1] if len(p) > 1 else "?")
    if stack is not None:
        yield stack, comm


def main():
    pid, messages, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    counts, other = collections.Counter(), collections.Counter()
    for stack, comm in samples(sys.stdin, pid):
        s = stage(stack, comm)
        counts[s] += 1
        if s == "other":
            other[" < ".join(stack[:4])[:160]] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit(f"no samples of process {pid}")
    print(f"{total} samples at {hz} Hz: {total / hz:.2f} s of CPU, {total / hz * 1e6 / messages:.0f} us per message")
    print(f"{'stage':42s} {'samples':>7s} {'share':>6s} {'us/msg':>7s}")
    for name, n in counts.most_common():
        print(f"{name:42s} {n:7d} {100 * n / total:5.1f}% {n / hz * 1e6 / messages:7.0f}")
    if "-v" in sys.argv:
        for k, v in other.most_common(25):
            print(v, k)


main()
