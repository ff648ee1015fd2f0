#!/usr/bin/env python3
"""End-of-DATA -> 250 latency of an SMTP server at a fixed offered load.

Sessions stay open and send one transaction after another; message i is due at
start + i/rate. The clock runs from the moment the final "." is written to the moment
the reply arrives, i.e. what the server spends making the message durable. Standard
library only."""

import argparse
import asyncio
import time


async def session(host, port, size, queue, latencies):
    reader, writer = await asyncio.open_connection(host, port)

    async def reply():
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if len(line) < 4 or line[3:4] != b"-":
                return line

    await reply()
    writer.write(b"EHLO latency.bench.test\r\n")
    await reply()
    body = b"Subject: latency\r\n\r\n" + b"x" * 76 + b"\r\n"
    body = body * max(1, size // len(body))
    while True:
        due = await queue.get()
        if due is None:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(b"MAIL FROM:<latency@sender.bench.test>\r\nRCPT TO:<rcpt@dest.bench.test>\r\nDATA\r\n")
        for _ in range(3):
            await reply()
        writer.write(body)
        await writer.drain()
        writer.write(b".\r\n")
        start = time.monotonic()
        line = await reply()
        latencies.append(time.monotonic() - start)
        if not line.startswith(b"250"):
            raise RuntimeError(f"unexpected reply {line!r}")
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--sessions", type=int, default=20)
    a = p.parse_args()
    queue = asyncio.Queue()
    start = time.monotonic() + 0.5
    for i in range(a.messages):
        queue.put_nowait(start + i / a.rate)
    for _ in range(a.sessions):
        queue.put_nowait(None)
    latencies = []
    await asyncio.gather(*(session(a.host, a.port, a.size, queue, latencies) for _ in range(a.sessions)))
    latencies.sort()
    ms = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(
        f"latency   end of DATA -> 250 at {a.rate:.0f} msg/s offered, {len(latencies)} messages: "
        f"p50 {ms(0.50):.2f} ms   p99 {ms(0.99):.2f} ms   max {latencies[-1] * 1000:.2f} ms"
    )


asyncio.run(main())
