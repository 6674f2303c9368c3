#!/usr/bin/env python3
"""What each kind of NATS operation costs nats-server, in CPU µs.

Usage: nats-op-cost.py NATS_URL NATS_PID [N]

Runs N operations of each kind the pipeline makes (64 in flight, as the
services' concurrent handlers do) against a nats-server with JetStream
and reads the server's CPU time from /proc before and after each:
KV reads (direct get), KV writes to new keys and to one key over and over
(a bucket keeps one value per key, so each write also removes the one
before), KV create (compare-and-set on "no value yet"), a JetStream
publish with `Nats-Msg-Id` (the history's appends), and a plain NATS
publish for scale. Used for deploy/BENCHMARKS.md, "What a NATS operation
costs"; needs nats-py (deploy/bench-ingress.sh --peer installs it in
~/.cache/smsgate-peer).
"""

import asyncio
import os
import sys

import nats
from nats.js.api import KeyValueConfig, StreamConfig

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


async def in_flight(n: int, op) -> None:
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await op(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def main() -> None:
    url, pid = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="cost", history=1, direct=True))
    await js.add_stream(StreamConfig(name="HIST", subjects=["hist.>"], max_msgs_per_subject=200,
                                     duplicate_window=120))
    await kv.put("hot", b"0")
    for i in range(1000):
        await kv.put(f"read.{i}", b"value-of-some-forty-bytes-like-a-sid-0123")

    async def read(i: int) -> None:
        await kv.get(f"read.{i % 1000}")

    async def put_new(i: int) -> None:
        await kv.put(f"new.{i}", b"SM0123456789abcdef0123456789abcdef")

    async def put_same(i: int) -> None:
        await kv.put(f"same.{i % 200}", str(i).encode())

    async def create(i: int) -> None:
        await kv.create(f"create.{i}", b'{"seq":1,"state":"processing"}')

    async def append(i: int) -> None:
        await js.publish(f"hist.c.{i % 2000}", b'{"v":1,"event":"x"}' * 10, headers={"Nats-Msg-Id": f"h{i}"})

    async def plain(i: int) -> None:
        await nc.publish("plain.x", b"x" * 200)

    print(f"nats-server CPU µs per operation ({n} of each, 64 in flight)")
    for name, op in [("KV read (direct get)", read), ("KV write, new key", put_new),
                     ("KV write, same keys again", put_same), ("KV create", create),
                     ("JetStream publish with Nats-Msg-Id", append), ("plain publish", plain)]:
        await nc.flush()
        before = cpu_seconds(pid)
        await in_flight(n, op)
        await nc.flush()
        used = cpu_seconds(pid) - before
        print(f"  {name:36} {used / n * 1e6:7.1f}")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
