"""The cashews mode of the compare benchmark (benches/README.md).

Replays the operations in --replay through cashews as a Python team sets it up in front of
Redis: its client-side cache (a local memory cache kept coherent by Redis's client
tracking), the `@cache` decorator (which merges concurrent misses in the process), asyncpg
with the statements the Rust modes send; prints one result line as the Rust modes'
children do. The parent reads the CPU and Redis counters itself between the `measuring`
and `measured` lines.

cashews's `lock=True` is not used: it takes a Redis lock around every call, hits included.
"""

import argparse
import asyncio
import json
import math
import os
import re
import sys
import time
from datetime import datetime, timezone
from urllib.parse import urlparse

import asyncpg
from cashews import Cache
from cashews.backends.memory import Memory

# Writes to one lead take turns (a lead's turn is `id % WRITE_STRIPES`), as in the Rust child.
WRITE_STRIPES = 1024
# The stampede probe: concurrent reads of one cold key whose loader takes PROBE_DELAY.
PROBE_CALLERS = 500
PROBE_DELAY = 0.05
PROBE_TIMEOUT = 15.0
VERSION = re.compile(r"^v(\d+)$")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--round", type=int, default=1)
    return parser.parse_args()


def load_replay(path):
    with open(path, encoding="utf-8") as f:
        config = json.loads(f.readline())
        ops = []
        for line in f:
            if not line.strip():
                continue
            kind, lead_id, org, phone = line.split()
            ops.append((kind == "w", int(lead_id), int(org), phone))
    return config, ops


def version(lead):
    match = VERSION.match(lead.get("notes") or "")
    return int(match.group(1)) if match else 0


def quantile(sorted_values, q):
    """The `q` quantile of `sorted_values`, nearest rank; 0 for none."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def rss_bytes():
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def main():
    args = parse_args()
    config, ops = load_replay(args.replay)
    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tiercache_compare")
    redis_url = urlparse(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/"))
    # The hand-written modes' pool: the service's size and statement timeout, and the setting
    # that keeps Tiercache's change triggers silent (a team without Tiercache has none).
    pool = await asyncpg.create_pool(
        database_url,
        min_size=config["pool_size"],
        max_size=config["pool_size"],
        server_settings={
            "tiercache.origin": "service",
            "statement_timeout": str(config["statement_timeout_ms"]),
        },
    )
    cache = Cache()
    cache.setup(
        f"redis://{redis_url.hostname}:{redis_url.port or 6379}/0",
        client_side=True,
        client_side_prefix=f"{args.prefix}:",
        local_cache=Memory(size=config["l1_max_entries"]),
    )
    await cache.init()
    ttl = config["l2_ttl_secs"]
    counts = {"reads": 0, "writes": 0}

    @cache(ttl=ttl, key="lead:{phone}:{org}")
    async def lead_by_phone(phone, org):
        counts["reads"] += 1
        row = await pool.fetchrow(config["lead_by_phone_sql"], org, phone)
        return dict(row) if row is not None else None

    async def write(lead_id, org, phone, notes):
        counts["writes"] += 1
        row = await pool.fetchrow(
            config["update_lead_sql"], lead_id, None, None, True, notes, datetime.now(timezone.utc)
        )
        if row is None:
            raise RuntimeError(f"updating lead {lead_id}, which does not exist")
        await cache.delete(f"lead:{phone}:{org}")

    max_id = max(op[1] for op in ops)
    committed = [0] * (max_id + 1)
    committed_at = [0] * (max_id + 1)
    turns = [asyncio.Lock() for _ in range(WRITE_STRIPES)]
    measure_from = config["warmup_ops"]
    end = config["warmup_ops"] + config["ops"]
    start = time.perf_counter_ns()
    deadline = start + config["max_seconds"] * 1_000_000_000
    state = {
        "next": 0,
        "first_start": None,
        "last_finish": None,
        "counted": None,
        "violations": 0,
        "stale_max_ns": 0,
        "errors": 0,
        "first_error": None,
        "timed_out": False,
    }
    read_times, write_times = [], []

    def failed(error):
        state["errors"] += 1
        if state["first_error"] is None:
            state["first_error"] = repr(error)

    async def worker():
        while True:
            index = state["next"]
            state["next"] += 1
            if index >= end:
                return
            started = time.perf_counter_ns()
            if started >= deadline:
                state["timed_out"] = True
                return
            if index == measure_from:
                state["counted"] = dict(counts)
                print("measuring", flush=True)
            is_write, lead_id, org, phone = ops[index]
            if is_write:
                async with turns[lead_id % WRITE_STRIPES]:
                    next_version = committed[lead_id] + 1
                    began = time.perf_counter_ns()
                    try:
                        await write(lead_id, org, phone, f"v{next_version}")
                        committed_at[lead_id] = time.perf_counter_ns() - start
                        committed[lead_id] = next_version
                    except Exception as error:  # noqa: BLE001 - counted and reported
                        failed(error)
                    took = time.perf_counter_ns() - began
            else:
                # What had committed before the read began: the read must be at least as new.
                expected, expected_at = committed[lead_id], committed_at[lead_id]
                began = time.perf_counter_ns()
                try:
                    lead = await lead_by_phone(phone, org)
                    took = time.perf_counter_ns() - began
                    if lead is None:
                        failed(RuntimeError(f"lead {lead_id} was not found"))
                    elif version(lead) < expected:
                        state["violations"] += 1
                        after = (began - start) - expected_at
                        state["stale_max_ns"] = max(state["stale_max_ns"], after)
                except Exception as error:  # noqa: BLE001 - counted and reported
                    took = time.perf_counter_ns() - began
                    failed(error)
            if index >= measure_from:
                (write_times if is_write else read_times).append(took / 1e3)
                if state["first_start"] is None:
                    state["first_start"] = started
                state["last_finish"] = time.perf_counter_ns()

    rss_setup = rss_bytes()
    await asyncio.gather(*(worker() for _ in range(config["concurrency"])))
    print("measured", flush=True)
    rss = rss_bytes()

    probe_runs = 0

    @cache(ttl=ttl, key="probe")
    async def probe():
        nonlocal probe_runs
        probe_runs += 1
        await asyncio.sleep(PROBE_DELAY)
        return {"id": -1, "org_id": 0, "phone": "+16460000000", "notes": None}

    await asyncio.wait_for(asyncio.gather(*(probe() for _ in range(PROBE_CALLERS))), PROBE_TIMEOUT)
    await cache.close()
    await pool.close()

    if state["counted"] is None or not read_times:
        print("no operation was measured", file=sys.stderr)
        sys.exit(1)
    reads, writes = len(read_times), len(write_times)
    window_reads = counts["reads"] - state["counted"]["reads"]
    seconds = (state["last_finish"] - state["first_start"]) / 1e9
    read_times.sort()
    write_times.sort()
    # The parent fills what it measures itself: CPU, Redis commands, the best hit ratio.
    result = {
        "mode": "cashews",
        "round": args.round,
        "ops": reads + writes,
        "reads": reads,
        "writes": writes,
        "seconds": seconds,
        "ops_per_sec": (reads + writes) / seconds,
        "read_p50_us": quantile(read_times, 0.5),
        "read_p99_us": quantile(read_times, 0.99),
        "read_p999_us": quantile(read_times, 0.999),
        "write_p50_us": quantile(write_times, 0.5),
        "write_p99_us": quantile(write_times, 0.99),
        "write_p999_us": quantile(write_times, 0.999),
        "read_queries": window_reads,
        "write_queries": counts["writes"] - state["counted"]["writes"],
        "hit_ratio": 1 - window_reads / reads,
        "best_hit_ratio": 0.0,
        "redis_commands": 0,
        "redis_cmds_per_op": 0.0,
        "cpu_us_per_op": 0.0,
        "cpu_process_us_per_op": 0.0,
        "cpu_postgres_us_per_op": 0.0,
        "cpu_redis_us_per_op": 0.0,
        "cpu_busy": 0.0,
        "cpu_steal": 0.0,
        "rss_bytes": rss,
        "rss_setup_bytes": rss_setup,
        "stampede_loader_runs": probe_runs,
        "violations": state["violations"],
        "stale_max_ms": state["stale_max_ns"] / 1e6,
        "errors": state["errors"],
        "first_error": state["first_error"],
        "timed_out": state["timed_out"],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
