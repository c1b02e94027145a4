"""python -m bench [--quick] [--only ingest,drain,latency,peer,e2e,scale]

Runs every benchmark in one go on this machine, each against its baseline measured in the same
run, prints a table and writes bench/results/<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis as sync_redis

from bench import cluster, drain, end_to_end, infra

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("ingest", "drain", "latency", "peer", "e2e", "scale", "cluster")


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


@dataclass
class Run:
    quick: bool
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(render([row], header=False), flush=True)
        return row

    @property
    def seconds(self) -> float:
        return 3.0 if self.quick else 8.0

    def scaled(self, count: int) -> int:
        return max(1000, count // 5) if self.quick else count


# -- sections -------------------------------------------------------------------------------------------

def ingest(run: Run) -> None:
    requests = infra.signed_requests(int(16000 * run.seconds))
    with infra.bare_starlette() as bare:
        infra.wrk(bare.url + "/hooks/generic", requests[:2000], 1.0)  # warm-up
        base = infra.wrk(bare.url + "/hooks/generic", requests, run.seconds)
    with infra.redis_server() as redis_url, infra.relay_serve(redis_url) as relay:
        infra.wrk(relay.url + "/hooks/generic", infra.signed_requests(2000), 1.0)
        got = infra.wrk(relay.url + "/hooks/generic", requests, run.seconds)
        half = _paced(relay.url + "/hooks/generic", got.rate / 2, run.seconds)
    run.add(Row("ingest", "bare Starlette 202", base.rate, "req/s", p50_ms=base.p50_ms, p99_ms=base.p99_ms))
    run.add(Row("ingest", "relay serve (signed, queued)", got.rate, "req/s", "bare Starlette", got.rate / base.rate,
                got.p50_ms, got.p99_ms, note=_errors(got)))
    run.add(Row("ingest", "relay at half its peak", half.rate, "req/s", "relay's peak", half.rate / got.rate,
                half.p50_ms, half.p99_ms, note=_errors(half)))


def _paced(url: str, target: float, seconds: float) -> infra.WrkResult:
    """wrk at about `target` requests/s. wrk paces by a delay between a connection's requests,
    which leaves out the answer's own time, so a short run first measures the shortfall."""
    trial = infra.wrk(url, infra.signed_requests(int(target * 2)), 2, rate=target)
    rate = target * min(2.0, target / trial.rate) if trial.rate < 0.95 * target else target
    return infra.wrk(url, infra.signed_requests(int(target * (seconds + 2))), seconds, rate=rate)


def _errors(result: infra.WrkResult) -> str:
    return f"{result.non_2xx} non-2xx, {result.errors} errors" if result.non_2xx or result.errors else ""


def drain_section(run: Run) -> None:
    count, concurrency = run.scaled(20000), 32
    with infra.nginx_letta() as letta:
        ceilings = {client: drain.client_ceiling(letta, count, concurrency, client)
                    for client in ("httpx", "aiohttp-transport", "aiohttp", "http1")}
        with infra.redis_server() as redis_url:
            got = drain.relay_drain(redis_url, letta, count, 1000, concurrency)
    run.add(Row("drain", "plain httpx loop, 32 at once", ceilings["httpx"], "req/s"))
    run.add(Row("drain", "httpx + aiohttp transport loop", ceilings["aiohttp-transport"], "req/s", "plain httpx",
                ceilings["aiohttp-transport"] / ceilings["httpx"]))
    run.add(Row("drain", "aiohttp loop", ceilings["aiohttp"], "req/s", "plain httpx", ceilings["aiohttp"] / ceilings["httpx"]))
    run.add(Row("drain", "relay worker, 1,000 conversations", got.rate, "msg/s", "plain httpx",
                got.rate / ceilings["httpx"]))
    run.add(Row("drain", "relay.http1 loop (relay's engine)", ceilings["http1"], "req/s", "aiohttp loop",
                ceilings["http1"] / ceilings["aiohttp"]))
    run.add(Row("drain", "relay worker vs aiohttp", got.rate, "msg/s", "aiohttp loop",
                got.rate / ceilings["aiohttp"], note="the same bodies, same concurrency, no queue"))
    run.add(Row("drain", "relay worker vs its engine", got.rate, "msg/s", "relay.http1 loop",
                got.rate / ceilings["http1"], note="what the queue costs"))


LETTA_LATENCY = 0.1  # seconds Letta takes to answer each call in the latency section
LATENCY_CONCURRENCY = (32, 64, 128, 256, 512)


def latency(run: Run) -> None:
    """Delivery when Letta takes 100 ms per call: the in-flight limit is concurrency ÷ 0.1 s."""
    with infra.slow_letta(LETTA_LATENCY) as letta:
        top = LATENCY_CONCURRENCY[-1]
        loop = drain.client_ceiling(letta, run.scaled(int(top / LETTA_LATENCY * 4)), top, "aiohttp")
        run.add(Row("latency", f"aiohttp loop, {top} at once, no queue", loop, "msg/s",
                    f"in-flight limit {top / LETTA_LATENCY:,.0f}/s", loop * LETTA_LATENCY / top,
                    note="the receiver and client side are not the bottleneck"))
        for concurrency in LATENCY_CONCURRENCY:
            limit = concurrency / LETTA_LATENCY
            count = max(5000, int(limit * run.seconds * (0.5 if run.quick else 1.0)))
            with infra.redis_server() as redis_url:
                got = drain.relay_drain(redis_url, letta, count, 1000, concurrency)
            run.add(Row("latency", f"relay worker, {concurrency} at once, 1,000 conv.", got.rate, "msg/s",
                        f"in-flight limit {limit:,.0f}/s", got.rate / limit, note=f"{count:,} messages"))


def peer(run: Run) -> None:
    from bench import peer_infra

    count = run.scaled(20000)
    requests = infra.signed_requests(int(12000 * run.seconds))
    with infra.redis_server() as redis_url, infra.relay_serve(redis_url) as relay:
        relay_in = infra.wrk(relay.url + "/hooks/generic", requests, run.seconds)
    with infra.redis_server() as redis_url, peer_infra.arq_serve(redis_url) as arq:
        arq_in = infra.wrk(arq.url + "/hooks/generic", requests, run.seconds)
    run.add(Row("peer", "arq ingest", arq_in.rate, "req/s", p50_ms=arq_in.p50_ms, p99_ms=arq_in.p99_ms, note=_errors(arq_in)))
    run.add(Row("peer", "relay ingest", relay_in.rate, "req/s", "arq", relay_in.rate / arq_in.rate,
                relay_in.p50_ms, relay_in.p99_ms))

    with infra.nginx_letta() as letta:
        with infra.redis_server() as redis_url:
            peer_infra.prefill_arq(redis_url, count, 1000)
            with peer_infra.arq_worker(redis_url, letta) as proc:
                arq_out = drain.watch_drain(redis_url, count, proc, remaining=peer_infra.arq_remaining)
        with infra.redis_server() as redis_url:
            relay_out = drain.relay_drain(redis_url, letta, count, 1000)
    run.add(Row("peer", "arq drain", arq_out.rate, "msg/s"))
    run.add(Row("peer", "relay drain", relay_out.rate, "msg/s", "arq", relay_out.rate / arq_out.rate))

    with end_to_end.timestamping_receiver() as receiver:
        with infra.redis_server() as redis_url, peer_infra.arq_serve(redis_url) as arq, \
                peer_infra.arq_worker(redis_url, receiver):
            end_to_end.measure(arq.url, receiver, rate=50, seconds=1)  # warm-up, as for relay
            arq_e2e = end_to_end.measure(arq.url, receiver, rate=200, seconds=run.seconds)
        with infra.redis_server() as redis_url, infra.relay_serve(redis_url) as relay, \
                infra.relay_worker(redis_url, receiver):
            end_to_end.measure(relay.url, receiver, rate=50, seconds=1)  # warm-up: connections, scripts
            relay_e2e = end_to_end.measure(relay.url, receiver, rate=200, seconds=run.seconds)
    run.add(Row("peer", "arq end to end, 200/s", arq_e2e.p50_ms, "ms p50", p50_ms=arq_e2e.p50_ms, p99_ms=arq_e2e.p99_ms))
    run.add(Row("peer", "relay end to end, 200/s", relay_e2e.p50_ms, "ms p50", "arq", arq_e2e.p99_ms / relay_e2e.p99_ms,
                relay_e2e.p50_ms, relay_e2e.p99_ms, note="ratio: arq p99 / relay p99 (higher is better)"))


def e2e(run: Run) -> None:
    with end_to_end.timestamping_receiver() as receiver, infra.redis_server() as redis_url, \
            infra.relay_serve(redis_url) as relay, infra.relay_worker(redis_url, receiver):
        end_to_end.measure(relay.url, receiver, rate=50, seconds=1)  # warm-up: connections, scripts
        got = end_to_end.measure(relay.url, receiver, rate=200, seconds=run.seconds)
    run.add(Row("e2e", "webhook sent → body at Letta, 200/s", got.p50_ms, "ms p50", p50_ms=got.p50_ms,
                p99_ms=got.p99_ms, note=f"{got.count} messages, max {got.max_ms:.1f} ms"))


def scale(run: Run) -> None:
    with infra.nginx_letta() as letta:
        rates = {}
        for conversations, count in ((1, 2000), (10, 10000), (1000, 20000), (20000, 20000)):
            count = run.scaled(count) if conversations != 1 else (1000 if run.quick else count)
            with infra.redis_server() as redis_url:
                rates[conversations] = drain.relay_drain(redis_url, letta, count, min(conversations, count)).rate
        ceiling_one = drain.client_ceiling(letta, 2000, 1, "aiohttp-transport")
        ceiling_ten = drain.client_ceiling(letta, 10000, 10, "aiohttp-transport")
        run.add(Row("scale", "1 conversation (strict order, one at a time)", rates[1], "msg/s",
                    "same engine, 1 at once", rates[1] / ceiling_one))
        run.add(Row("scale", "10 conversations", rates[10], "msg/s", "same engine, 10 at once", rates[10] / ceiling_ten))
        run.add(Row("scale", "1,000 conversations", rates[1000], "msg/s", "every message its own conversation",
                    rates[1000] / rates[20000], note="the ordering machinery's cost is 1 - ratio"))
        run.add(Row("scale", "every message its own conversation", rates[20000], "msg/s"))

        count = 20000 if run.quick else 100000
        with infra.redis_server() as redis_url:
            client = sync_redis.Redis.from_url(redis_url)
            before = int(client.info("memory")["used_memory"])
            asyncio.run(drain.prefill(redis_url, count, 1000))
            after = int(client.info("memory")["used_memory"])
            with infra.relay_worker(redis_url, letta) as proc:
                got = drain.watch_drain(redis_url, count, proc)
        run.add(Row("scale", f"Redis memory per queued message ({count:,} queued)", (after - before) / count, "bytes",
                    note="~100-byte text; includes the dedup marker"))
        run.add(Row("scale", f"worker peak RSS draining {count:,} queued", got.rss_mib, "MiB",
                    note=f"drained at {got.rate:,.0f} msg/s"))


def cluster_section(run: Run) -> None:
    """One server against a three-master cluster, the same load; what a second worker adds."""
    requests = infra.signed_requests(int(16000 * run.seconds))
    count = run.scaled(20000)
    ingest: dict[str, infra.WrkResult] = {}
    drains: dict[tuple[str, int], float] = {}
    with infra.nginx_letta() as letta:
        with infra.redis_server() as url:
            ingest["one"] = cluster.ingest_rate(url, requests, run.seconds)
            for workers in (1, 2):
                drains["one", workers] = cluster.drain_rate(url, letta, count, workers)
        with cluster.redis_cluster() as nodes:
            ingest["cluster"] = cluster.ingest_rate(nodes.url, requests, run.seconds)
            for workers in (1, 2):
                drains["cluster", workers] = cluster.drain_rate(nodes.url, letta, count, workers)
        with cluster.redis_cluster(replicas=1) as nodes:
            ingest["replicas"] = cluster.ingest_rate(nodes.url, requests, run.seconds, RELAY_REDIS_MIN_REPLICAS="1")
    one, three, waited = ingest["one"], ingest["cluster"], ingest["replicas"]
    run.add(Row("cluster", "ingest, one server", one.rate, "req/s", p50_ms=one.p50_ms, p99_ms=one.p99_ms))
    run.add(Row("cluster", "ingest, cluster of 3 masters", three.rate, "req/s", "one server", three.rate / one.rate,
                three.p50_ms, three.p99_ms, note=_errors(three)))
    run.add(Row("cluster", "ingest, 3 masters + 3 replicas, MIN_REPLICAS=1", waited.rate, "req/s",
                "cluster, no WAIT", waited.rate / three.rate, waited.p50_ms, waited.p99_ms, note=_errors(waited)))
    for where, label in (("one", "one server"), ("cluster", "cluster of 3 masters")):
        run.add(Row("cluster", f"drain, {label}, 1 worker", drains[where, 1], "msg/s",
                    *(("one server, 1 worker", drains[where, 1] / drains["one", 1]) if where == "cluster" else ())))
        run.add(Row("cluster", f"drain, {label}, 2 workers", drains[where, 2], "msg/s", f"{label}, 1 worker",
                    drains[where, 2] / drains[where, 1]))


# -- output ---------------------------------------------------------------------------------------------

def render(rows: list[Row], header: bool = True) -> str:
    lines = []
    if header:
        lines.append(f"{'section':<7} {'what':<46} {'value':>12} {'unit':<7} {'vs':<28} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}  note")
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        p50 = f"{r.p50_ms:.1f}" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.1f}" if r.p99_ms is not None else ""
        lines.append(f"{r.section:<7} {r.name[:46]:<46} {r.value:>12,.1f} {r.unit:<7} {r.baseline[:28]:<28} {ratio:>6} {p50:>7} {p99:>7}  {r.note}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "system": platform.platform(), "load_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check, not for figures)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    run = Run(quick=args.quick)
    sections = {"ingest": ingest, "drain": drain_section, "latency": latency, "peer": peer, "e2e": e2e, "scale": scale,
                "cluster": cluster_section}
    started = time.time()
    print(render([], header=True))
    for name in chosen:
        sections[name](run)
    print()
    print(render(run.rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({"started": started, "seconds": time.time() - started, "machine": machine(),
                               "quick": run.quick, "rows": [asdict(r) for r in run.rows]}, indent=2))
    print(f"\nwritten {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
