#!/usr/bin/env python3
"""Counts the NATS operations of each service per webhook, from a
nats-server trace (`trace: true` or `-V`).

Usage: nats-ops.py TRACE_LOG WEBHOOKS

Every client publish (`<<- [PUB …]` / `[HPUB …]`) is put in a family by
its subject (a KV read, a KV write, an ack by its payload, a stream
publish, a pull request, …) and counted under the client's connection
name (`smsgate-ingress`, `-worker`, `-sender`); the table gives each
family per webhook. Deliveries to clients (`->> [MSG …]`/`[HMSG …]`) are
counted per client too. Used by `deploy/bench-pipeline.sh` with
`NATS_TRACE=1`.
"""

import collections
import re
import sys

# `[TRC] 127.0.0.1:40000 - cid:7 - "v0.38.0:rust:smsgate-worker" - <<- [PUB …]`
LINE = re.compile(r'\[TRC\] \S+ - cid:(\d+)(?: - "([^"]*)")? - (<<-|->>) (.*)$')
CONNECT = re.compile(r'"name":"([^"]+)"')


def family(subject: str, payload: str) -> str:
    if subject.startswith("$JS.API.DIRECT.GET."):
        stream = subject.split(".")[4]
        return f"read {kv(stream)}"
    if subject.startswith("$JS.API.STREAM.MSG.GET."):
        return f"msg get {kv(subject.split('.')[5])}"
    if subject.startswith("$KV."):
        return f"write {bucket(subject.split('.')[1])}"
    if subject.startswith("$JS.ACK."):
        stream = bucket(subject.split(".")[2])
        what = {"+ACK": "ack", "-NAK": "nak", "+WPI": "progress", "+TERM": "term"}.get(payload.split(" ")[0], payload[:8] or "ack")
        return f"{what} {stream}"
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return f"pull {bucket(subject.split('.')[5])}"
    if subject.startswith("$JS.API."):
        parts = subject.split(".")
        return "api " + ".".join(parts[2:4])
    if subject.startswith("_INBOX.") or subject.startswith("$JS.FC"):
        return "inbox/flow control"
    parts = subject.split(".")
    if len(parts) >= 2:  # `<prefix>.history.…` is stream P_HISTORY
        return f"publish P_{parts[1].upper()}"
    return f"publish {subject}"


def kv(stream: str) -> str:
    """`KV_SMSGATE_sent` → `P_sent` (P, the prefix, as in DESIGN.md)."""
    return bucket(stream[3:]) if stream.startswith("KV_") else bucket(stream)


def bucket(name: str) -> str:
    return "P_" + name.split("_", 1)[1] if "_" in name else name


def main() -> None:
    path, webhooks = sys.argv[1], float(sys.argv[2])
    names: dict[str, str] = {}
    ops: collections.Counter = collections.Counter()
    delivered: collections.Counter = collections.Counter()
    pending = None  # (client, subject) of a publish whose payload line comes next
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.search(raw)
            if not m:
                continue
            cid, label, direction, rest = m.groups()
            if rest.startswith("[CONNECT"):
                n = CONNECT.search(rest)
                if n:
                    names[cid] = n.group(1)
                continue
            client = names.get(cid) or (label.split(":")[-1] if label else f"cid {cid}")
            if direction == "<<-" and rest.startswith("MSG_PAYLOAD:"):
                if pending:
                    payload = rest[len("MSG_PAYLOAD: [\""):].rstrip("\"]")
                    ops[(pending[0], family(pending[1], payload))] += 1
                    pending = None
                continue
            if pending:  # a publish without a payload line
                ops[(pending[0], family(pending[1], ""))] += 1
                pending = None
            if direction == "<<-" and (rest.startswith("[PUB ") or rest.startswith("[HPUB ")):
                pending = (client, rest.strip("[]").split(" ")[1])
            elif direction == "->>" and (rest.startswith("[MSG ") or rest.startswith("[HMSG ")):
                delivered[client] += 1
    if pending:
        ops[(pending[0], family(pending[1], ""))] += 1
    print(f"NATS operations per webhook ({webhooks:.0f} webhooks; client publishes by family, then deliveries)")
    clients = sorted({c for c, _ in ops} | set(delivered))
    total = 0.0
    for client in clients:
        rows = sorted(((f, n) for (c, f), n in ops.items() if c == client), key=lambda r: -r[1])
        sent = sum(n for _, n in rows) / webhooks
        total += sent
        print(f"  {client}: {sent:.2f} out, {delivered[client] / webhooks:.2f} delivered to it")
        for f, n in rows:
            if n / webhooks >= 0.005:
                print(f"    {n / webhooks:6.2f}  {f}")
    print(f"  all clients: {total:.2f} publishes per webhook")


if __name__ == "__main__":
    main()
