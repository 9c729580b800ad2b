"""Sessions by series id in Redis: 100,000 open series of a panel model, observations arriving at
random over many connections, with 1 and 2 workers (issue 26, §2).

One real ``redis-server`` (no persistence, as the tests start it) and ``rnnops serve --workers N``
with ``RNNOPS_SESSION_STORE=redis://...``, serving the retail panel model of
benchmarks/series_http.py (GRU 2x64, lookback 56, horizon 14, 11 quantiles; exported by
export/panel_export.py). Steps:

1. ``--series`` sessions are opened (``POST /sessions`` with the series' ``id``, its 56 days of
   sales and timestamps, promo and price over 56 + 14 days, its statics) by ``wrk``, one
   connection per thread; Redis's ``INFO memory`` before and after gives the memory per series,
   and a sample of keys (``MEMORY USAGE``, the value's header and arrays, the index's share) says
   where it goes;
2. for each worker count (the same Redis, the sessions stay open: any worker continues any
   series), ``wrk`` sends updates for ``--seconds``: ``--connections`` connections, one per
   thread, each owning a disjoint share of the series and picking one at random for each update
   (one observation with its timestamp, promo and price for the next 14 days), closed loop.
   Reported: updates/s, p50/p99, errors, server / Redis / client CPU per update, each process's
   RSS, the load average. With ``--bulk N`` each request carries N updates, to N different
   series of the connection's share (``POST /session-updates``): updates/s counts updates,
   p50/p99 are per request;
3. after each run every series' observation count is read back from Redis: the total must be
   the opened histories plus the updates answered 200 (nothing lost, nothing applied twice), and
   the counts seed the next run's timestamps.

Goals: >= 5,000 updates/s, p99 < 50 ms at that rate, <= 4 KB of Redis per series.

    python benchmarks/series_sessions.py --quick --json out.json      # 5,000 series
    python benchmarks/series_sessions.py --series 100000 --json out.json
    python benchmarks/series_sessions.py --series 100000 --open-http 3000 --bulk 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import series_http as SH  # noqa: E402

PREFIX = "rnnops:session:"
INDEX = "rnnops:sessions"
START_DAY = "2024-01-01"

# wrk: every thread has one connection and its own share of the series (tid, tid + T, ...), so one
# series is never updated by two requests at once from this client (the server would refuse the
# second: it no longer continues the series). Bodies are built per request from pre-encoded parts.
_WRK_COMMON = r"""
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function done(summary, latency, requests)
  local final = os.getenv("RNNOPS_BENCH_FINAL")  -- where the update script leaves each series' sent count
  if final then
    local f = assert(io.open(final, "w"))
    for _, t in ipairs(threads) do
      for i, s in pairs(t:get("steps")) do f:write(i, " ", s, "\n") end
    end
    f:close()
  end
  local ok, bad, first = 0, 0, ""
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok")
    bad = bad + t:get("bad")
    if first == "" then first = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "ok": %d, "duration_us": %d, "non_200": %d, ' ..
    '"socket_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, ok, summary.duration, bad, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  if first ~= "" then io.write("FIRST_ERROR " .. first .. "\n") end
end
"""

WRK_OPEN = (
    _WRK_COMMON
    + r"""
-- args: n_series, n_threads, body files (each a POST /sessions body with __ID__ for the id)
function init(args)
  n, nthreads = tonumber(args[1]), tonumber(args[2])
  heads, tails = {}, {}
  for k = 3, #args do
    local p = read(args[k])
    local a, b = string.find(p, "__ID__", 1, true)
    heads[#heads + 1], tails[#tails + 1] = string.sub(p, 1, a - 1), string.sub(p, b + 1)
  end
  nxt, mine = tid, 0
  for i = tid, n - 1, nthreads do mine = mine + 1 end
  ok, bad, first_bad, answered = 0, 0, "", 0
  hdr = {["Content-Type"] = "application/json"}
  idle = wrk.format("GET", "/readyz")
  checked = tid ~= 0  -- wrk calls thread 0's request() once to inspect it, and sends nothing
end

function request()
  if not checked then checked = true return idle end
  if nxt >= n then return idle end
  local i = nxt
  nxt = nxt + nthreads
  local k = i % #heads + 1
  return wrk.format("POST", "/sessions", hdr, heads[k] .. string.format("s%06d", i) .. tails[k])
end

function response(status, headers, body)
  answered = answered + 1
  if answered <= mine then
    if status == 201 then ok = ok + 1 else
      bad = bad + 1
      if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 200) end
    end
  end
  if answered >= mine then wrk.thread:stop() end
end
"""
)

WRK_UPDATE = (
    _WRK_COMMON
    + r"""
-- args: n_threads, day-0 epoch seconds, steps folder (steps_<tid>.txt: "series observations" lines),
-- future-covariate JSON fragments (one file, one a line), updates per request (0: POST /sessions/{id},
-- N: POST /session-updates with N different series)
function init(args)
  nthreads, base, bulk = tonumber(args[1]), tonumber(args[2]), tonumber(args[5])
  ids, steps = {}, {}
  for line in io.lines(args[3] .. "/steps_" .. tid .. ".txt") do
    local i, s = line:match("(%d+) (%d+)")
    i = tonumber(i)
    ids[#ids + 1] = i
    steps[i] = tonumber(s)
  end
  fut = {}
  for line in io.lines(args[4]) do fut[#fut + 1] = line end
  math.randomseed(1000003 * (tid + 1) + os.time())
  ok, bad, first_bad, cur = 0, 0, "", {}
  hdr = {["Content-Type"] = "application/json"}
  checked = tid ~= 0  -- wrk calls thread 0's request() once to inspect it, and sends nothing
end

local function one(i)  -- series i's next step: one observation, its timestamp, the next 14 days' covariates
  local k = steps[i]
  steps[i] = k + 1
  return string.format('"observations":[%d],"timestamps":["%s"],"future_covariates":%s',
    math.random(0, 30), os.date("!%Y-%m-%d", base + k * 86400), fut[math.random(#fut)])
end

function request()
  if not checked then checked = true return wrk.format("GET", "/readyz") end
  if bulk == 0 then
    local i = ids[math.random(#ids)]
    cur = {i}
    return wrk.format("POST", string.format("/sessions/s%06d", i), hdr, "{" .. one(i) .. "}")
  end
  cur = {}
  local taken, items = {}, {}
  while #cur < bulk do  -- bulk distinct series of this connection's share
    local i = ids[math.random(#ids)]
    if not taken[i] then
      taken[i] = true
      cur[#cur + 1] = i
      items[#items + 1] = string.format('{"id":"s%06d",', i) .. one(i) .. "}"
    end
  end
  return wrk.format("POST", "/session-updates", hdr, '{"updates":[' .. table.concat(items, ",") .. "]}")
end

local function refused(i, why)
  bad = bad + 1
  steps[i] = steps[i] - 1  -- not applied: the series' next step is still the same one
  if first_bad == "" then first_bad = why end
end

function response(status, headers, body)
  if status ~= 200 then
    for _, i in ipairs(cur) do refused(i, status .. " " .. string.sub(body or "", 1, 200)) end
    return
  end
  local n = 0
  if bulk > 0 then  -- a bulk answer: an item that failed is {"id":"s000042","error":{...}}
    for i, rest in string.gmatch(body, '{"id":"s(%d+)","error":({[^}]*})') do
      n = n + 1
      refused(tonumber(i), "item " .. rest)
    end
  end
  ok = ok + #cur - n
end
"""
)


# ----------------------------------------------------------------------------- Redis


def start_redis(work: Path):
    """``redis-server`` on a free loopback port, no persistence (as tests/servers.py starts it)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("error: no redis-server on PATH (make system-deps, or bash scripts/install_redis.sh)")
    import redis

    port = C.free_port()
    d = work / "redis"
    d.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no"]
    proc = C.start_process(argv, dict(os.environ), d / "redis.log", cwd=d)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{C.tail(d / 'redis.log')}") from None
            time.sleep(0.1)
    return proc, client, f"redis://127.0.0.1:{port}/0"


def redis_memory(r) -> dict:
    info = r.info("memory")
    return {k: info[k] for k in ("used_memory", "used_memory_rss", "used_memory_dataset", "mem_allocator")}


def key_breakdown(r, ids: list[str], n_series: int) -> dict:
    """Where a session's Redis bytes go, from a sample of its keys (one string each: a fixed
    header, a JSON of what varies, the arrays; serving/forecast/redis_store.py)."""
    from rnnops.serving.forecast.redis_store import HEAD

    usage = [r.memory_usage(PREFIX + s, samples=0) or 0 for s in ids]
    raw = r.get(PREFIX + ids[0])
    json_bytes = HEAD.unpack_from(raw)[2]
    return {
        "sample": len(ids),
        "key_bytes_mean": float(np.mean(usage)),
        "encoding": (r.object("encoding", PREFIX + ids[0]) or b"-").decode(),
        "value_bytes": len(raw),
        "fixed_header_bytes": HEAD.size,
        "json_header_bytes": json_bytes,
        "array_bytes": len(raw) - HEAD.size - json_bytes,
        "json_header": raw[HEAD.size : HEAD.size + json_bytes].decode(),
        "index_bytes_per_series": (r.memory_usage(INDEX, samples=0) or 0) / max(1, n_series),
        "index_encoding": (r.object("encoding", INDEX) or b"-").decode(),
    }


def clone_sessions(r, n_http: int, n_series: int, ttl_s: float) -> int:
    """Series ``n_http .. n_series`` as copies of the sessions opened over HTTP (series ``i`` is
    ``i % n_http``'s value, byte for byte: a session's id is its key's), indexed and expiring as
    the store does: opening 100,000 sessions over HTTP takes longer than this machine's budget."""
    p = r.pipeline(transaction=False)
    for i in range(n_http):
        p.get(f"{PREFIX}s{i:06d}")
    sources = p.execute()
    for lo in range(n_http, n_series, 2000):
        p = r.pipeline(transaction=False)
        for i in range(lo, min(n_series, lo + 2000)):
            sid = f"s{i:06d}"
            p.set(PREFIX + sid, sources[i % n_http], px=int(ttl_s * 1000))
            p.zadd(INDEX, {sid: time.time() + ttl_s})
        p.execute()
    return n_series - n_http


def observations(r, n: int) -> np.ndarray:
    """Every series' observation count as Redis holds it (-1: no such session), from the
    header at the start of each key."""
    from rnnops.serving.forecast.redis_store import HEAD, read_header

    out = np.full(n, -1, np.int64)
    for lo in range(0, n, 5000):
        hi = min(n, lo + 5000)
        p = r.pipeline(transaction=False)
        for i in range(lo, hi):
            p.getrange(f"{PREFIX}s{i:06d}", 0, 511)  # the header (a longer one is read whole below)
        for i, raw in zip(range(lo, hi), p.execute()):
            if raw and HEAD.size + HEAD.unpack_from(raw)[2] > len(raw):
                raw = r.get(f"{PREFIX}s{i:06d}")
            if raw:
                out[i] = read_header(f"s{i:06d}", raw)[1]["o"]
    return out


def exactly_once(before: np.ndarray, after: np.ndarray, sent_file: Path, answered: int, max_in_flight: int) -> dict:
    """Each series' observations in Redis against what the client sent it (its count before the
    run plus the updates sent and not refused): more in Redis = applied twice; fewer = lost, or
    in flight when the client stopped (at most one request's updates per connection; the client never saw those
    answers, so ``sent - answered`` of them exist)."""
    sent = before.copy()
    for line in sent_file.read_text().splitlines():
        i, k = line.split()
        sent[int(i)] = int(k)
    applied = int((after - before)[before >= 0].sum())
    sent_n = int((sent - before)[before >= 0].sum())
    doubled = int((after > sent).sum())
    behind = int((after < sent).sum())
    in_flight = sent_n - answered
    return {
        "sent": sent_n,
        "answered_200": answered,
        "applied": applied,
        "series_ahead_of_client": doubled,
        "series_behind_client": behind,
        "in_flight_at_stop": in_flight,
        "exactly_once": doubled == 0 and 0 <= in_flight <= max_in_flight and behind <= in_flight,
    }


def write_steps(folder: Path, counts: np.ndarray, threads: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(threads):
        idx = np.arange(t, len(counts), threads)
        (folder / f"steps_{t}.txt").write_text("".join(f"{i} {counts[i]}\n" for i in idx))


# ----------------------------------------------------------------------------- load


def run_wrk(
    script: Path,
    url: str,
    threads: int,
    seconds: float,
    args: list[str],
    done: Callable[[], bool] | None = None,
    env: dict | None = None,
) -> dict:
    """``wrk`` for ``seconds``, or until ``done()`` holds (then SIGINT: wrk stops and reports;
    its -d clock would otherwise run on after every thread has finished)."""
    argv = ["wrk", f"-t{threads}", f"-c{threads}", f"-d{max(1, round(seconds))}s", "--timeout", "60s"]
    argv += ["-s", str(script), url, "--", *args]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if done is not None:
        while proc.poll() is None and not done():
            time.sleep(0.5)
        time.sleep(1.0)  # the last answers
        while proc.poll() is None:  # any of wrk's threads may take the signal: only its main one ends the run
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=seconds + 600)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr.strip() or stdout.strip()}")
    r = json.loads(line[len("RESULT ") :])
    r["first_error"] = next(
        (ln[len("FIRST_ERROR ") :] for ln in stdout.splitlines() if ln.startswith("FIRST_ERROR ")), None
    )
    r["client_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return r


def open_bodies(work: Path, k: int = 32) -> list[Path]:
    """POST /sessions bodies (``__ID__`` in place of the id) from fresh retail series, all on the
    same 56 days from START_DAY (one calendar for the whole panel)."""
    from rnnops import timeseries

    entries = SH.series_entries(k, seed=2)
    days = timeseries.iso(
        timeseries.parse_iso([START_DAY])[0] + timeseries.DAY_NS * np.arange(SH.LOOKBACK + SH.HORIZON, dtype=np.int64)
    )
    files = []
    for j, e in enumerate(entries):
        body = {"model": "retail", **e, "id": "__ID__", "timestamps": [d[:10] for d in days[: SH.LOOKBACK]]}
        f = work / f"open_{j:02d}.json"
        f.write_text(json.dumps(body))
        files.append(f)
    return files


def future_fragments(work: Path, k: int = 64) -> Path:
    """``{"promo": [14], "price": [14]}`` JSON fragments, one a line, from fresh retail series."""
    entries = SH.series_entries(k, seed=3)
    path = work / "future.txt"
    path.write_text(
        "".join(
            json.dumps({c: v[-SH.HORIZON :] for c, v in e["future_covariates"].items()}, separators=(",", ":")) + "\n"
            for e in entries
        )
    )
    return path


def processes(root: int) -> list[dict]:
    out = []
    for pid in C.process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rss = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
        out.append({"pid": pid, "rss_mb": round(rss / 1024, 1), "cmd": cmd[:120]})
    return out


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def run(
    quick: bool,
    work: Path,
    n_series: int,
    workers_list=(1, 2),
    connections: tuple[int, ...] = (64,),
    seconds: float = 30.0,
    open_threads: int = 32,
    profile_s: float = 0.0,
    open_http: int | None = None,
    bulk: int = 0,
) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("error: this benchmark drives the server with wrk: bash scripts/install_wrk.sh")
    work.mkdir(parents=True, exist_ok=True)
    print("training + exporting the retail panel model…", file=sys.stderr)
    panel_path, panel_info = SH.panel_model(work / "panel", budget_s=8.0 if quick else 20.0)
    bodies = open_bodies(work)
    fut = future_fragments(work)
    open_lua, update_lua = work / "wrk_open.lua", work / "wrk_update.lua"
    open_lua.write_text(WRK_OPEN)
    update_lua.write_text(WRK_UPDATE)
    base_epoch = int(np.datetime64(START_DAY, "s").astype(np.int64))
    rproc, r, url = start_redis(work)
    out: dict = {
        "quick": quick,
        "series": n_series,
        "model": panel_info,
        "open_body_bytes": int(np.median([f.stat().st_size for f in bodies])) - len("__ID__") + 7,
        "client": SH.FH.wrk_version(),
        "redis": r.info("server")["redis_version"],
        "seconds_per_run": seconds,
        "bulk": bulk,
        "load_start": load1(),
        "runs": [],
    }
    env = {
        **os.environ,
        "RNNOPS_SESSION_STORE": url,
        "RNNOPS_MAX_SESSIONS": str(n_series + 1000),
        "RNNOPS_SESSION_TTL": "7200",
        "RNNOPS_THREADS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONWARNINGS": "ignore",
    }
    models = f"retail={panel_path}"
    try:
        mem0 = redis_memory(r)
        proc, base = SH.start_server(env, models, work, workers=1, name="sessions-open")
        n_http = min(n_series, open_http or n_series)
        try:
            print(f"opening {n_http:,} sessions over HTTP…", file=sys.stderr)
            t0, l0 = time.perf_counter(), load1()
            opened = run_wrk(
                open_lua,
                base,
                open_threads,
                3600,
                [str(n_http), str(open_threads), *map(str, bodies)],
                done=lambda: r.zcard(INDEX) >= n_http,
            )
            secs = time.perf_counter() - t0
        finally:
            C.stop_process(proc)
        mem1 = redis_memory(r)
        out["open"] = {
            "opened": opened["ok"],
            "errors": opened["non_200"] + opened["socket_errors"] + opened["timeouts"],
            "first_error": opened["first_error"],
            "seconds": round(secs, 1),
            "opens_per_s": opened["ok"] / secs,
            "p50_ms": opened["p50_us"] / 1e3,
            "p99_ms": opened["p99_us"] / 1e3,
            "load_1m": [l0, load1()],
        }
        print(f"  {out['open']}", file=sys.stderr)
        out["memory"] = {
            "before": mem0,
            "after": mem1,
            "keys": r.dbsize(),
            "bytes_per_series": (mem1["used_memory"] - mem0["used_memory"]) / max(1, opened["ok"]),
            "rss_bytes_per_series": (mem1["used_memory_rss"] - mem0["used_memory_rss"]) / max(1, opened["ok"]),
            "breakdown": key_breakdown(r, [f"s{i:06d}" for i in range(0, n_http, max(1, n_http // 200))], n_http),
        }
        print(f"  redis bytes per series: {out['memory']['bytes_per_series']:.0f}", file=sys.stderr)
        if n_http < n_series:
            cloned = clone_sessions(r, n_http, n_series, float(env["RNNOPS_SESSION_TTL"]))
            mem2 = redis_memory(r)
            out["clone"] = {
                "cloned": cloned,
                "keys": r.dbsize(),
                "after": mem2,
                "bytes_per_series": (mem2["used_memory"] - mem0["used_memory"]) / max(1, n_series),
            }
            print(f"  cloned to {n_series:,}: {out['clone']['bytes_per_series']:.0f} bytes per series", file=sys.stderr)
        profiles: dict[str, dict[str, float]] = {}
        counts = observations(r, n_series)
        out["open"]["series_in_redis"] = int((counts >= 0).sum())
        for workers in workers_list:
            proc, base = SH.start_server(env, models, work, workers=workers, name=f"sessions-w{workers}")
            try:
                # warm-up: a few seconds of updates (connections, lazy imports, ORT's first runs)
                for k, c in enumerate((8, *connections)):
                    write_steps(work / "steps", counts, c)
                    warm = k == 0  # the first run only warms up
                    l0 = load1()
                    cpu0 = C.tree_cpu_s(proc.pid)
                    rcpu0 = C.tree_cpu_s(rproc.pid)
                    prof = None
                    if profile_s and not warm and shutil.which("py-spy"):
                        prof = profile_workers(proc.pid, work / f"profile-w{workers}-c{c}", profile_s)
                    final = work / "sent.txt"
                    final.unlink(missing_ok=True)
                    res = run_wrk(
                        update_lua,
                        base,
                        c,
                        3.0 if warm else seconds,
                        [str(c), str(base_epoch), str(work / "steps"), str(fut), str(bulk)],
                        env={**os.environ, "RNNOPS_BENCH_FINAL": str(final)},
                    )
                    cpu = C.tree_cpu_s(proc.pid) - cpu0
                    rcpu = C.tree_cpu_s(rproc.pid) - rcpu0
                    if prof:
                        for p in prof:
                            p.wait(profile_s + 60)
                        files = sorted(work.glob(f"profile-w{workers}-c{c}-*.txt"))
                        profiles[f"{workers}x{c}"] = profile_parts(files)
                    in_flight_max = c * max(1, bulk)  # a request's updates are in flight together
                    check = exactly_once(counts, observations(r, n_series), final, res["ok"], in_flight_max)
                    counts = observations(r, n_series)
                    if warm:
                        continue
                    wall = res["duration_us"] / 1e6
                    row = {
                        "workers": workers,
                        "connections": c,
                        "updates_per_request": max(1, bulk),
                        "requests_per_s": res["requests"] / wall,
                        "updates": res["ok"],
                        "errors": res["non_200"] + res["socket_errors"] + res["timeouts"],
                        "first_error": res["first_error"],
                        "updates_per_s": res["ok"] / wall,
                        "p50_ms": res["p50_us"] / 1e3,
                        "p90_ms": res["p90_us"] / 1e3,
                        "p99_ms": res["p99_us"] / 1e3,
                        "max_ms": res["max_us"] / 1e3,
                        "server_cpu_ms_per_update": 1e3 * cpu / max(1, res["ok"]),
                        "redis_cpu_ms_per_update": 1e3 * rcpu / max(1, res["ok"]),
                        "client_cpu_ms_per_update": 1e3 * res["client_cpu_s"] / max(1, res["ok"]),
                        "processes": processes(proc.pid),
                        "load_1m": [l0, load1()],
                        **check,
                    }
                    out["runs"].append(row)
                    print(
                        f"  workers={workers} c={c} bulk={bulk}: {row['updates_per_s']:.0f} updates/s, p50 {row['p50_ms']:.1f} "
                        f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}, server cpu "
                        f"{row['server_cpu_ms_per_update']:.2f} ms/update, redis "
                        f"{row['redis_cpu_ms_per_update']:.2f}, load {row['load_1m']}, exactly once "
                        f"{row['exactly_once']} ({check})",
                        file=sys.stderr,
                    )
                    if row["first_error"]:
                        print(f"    first error: {row['first_error']}", file=sys.stderr)
            finally:
                C.stop_process(proc)
        out["redis_memory_end"] = redis_memory(r)
        out["profile"] = profiles
    finally:
        C.stop_process(rproc)
    out["load_end"] = load1()
    best = max(out["runs"], key=lambda x: x["updates_per_s"]) if out["runs"] else None
    # Redis bytes per series with all of them open (the figure at --series), else as opened over HTTP
    per_series = (out.get("clone") or out["memory"])["bytes_per_series"]
    out["goal"] = {
        "updates_per_s": best["updates_per_s"] if best else None,
        "at": {"workers": best["workers"], "connections": best["connections"]} if best else None,
        "p99_ms": best["p99_ms"] if best else None,
        "bytes_per_series": per_series,
        "exactly_once": all(x["exactly_once"] for x in out["runs"]) and out["open"]["errors"] == 0,
        "met_rate": bool(best and best["updates_per_s"] >= 5000),
        "met_p99": bool(best and best["updates_per_s"] >= 5000 and best["p99_ms"] < 50),
        "met_memory": per_series <= 4096,
    }
    return out


# py-spy's raw stacks sorted into the parts of an update, first match wins (frame substrings). The
# update's own work runs inside the store's update() (which calls it back), so it is matched first.
PROFILE_PARTS = (
    ("model run (onnxruntime)", ("onnxruntime",)),
    ("panel features", ("panel_features", "rnnops/calendar", "rnnops/timeseries")),
    ("session update (checks, the series advanced, the batcher hand-off)", ("_observe_series", "_forecast_series")),
    ("session store (redis-py, encode/decode)", ("redis_store", "redis/")),
    ("request body and answer (pydantic, orjson)", ("parse_body", "session_view", "JSONResponse")),
    ("BentoML's request metrics (prometheus_client, a label set per session path)", ("prometheus_client",)),
    ("HTTP response write (uvicorn)", ("StreamWriter.writelines", "httptools_impl")),
    ("HTTP stack (uvicorn, starlette, BentoML middleware)", ("starlette", "bentoml", "uvicorn")),
    ("thread-pool hand-off", ("concurrent/futures",)),
)


def profile_parts(files: list[Path], parts_by: tuple = PROFILE_PARTS) -> dict[str, float]:
    """Share of the workers' sampled stacks per part of an update (py-spy ``-f raw`` files)."""
    parts: dict[str, int] = {}
    total = 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            total += int(n)
            name = next((p for p, keys in parts_by if any(k in stack for k in keys)), "other (event loop, GC)")
            parts[name] = parts.get(name, 0) + int(n)
    return {k: round(v / total, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])} if total else {}


def profile_workers(root: int, path: Path, seconds: float) -> list[subprocess.Popen]:
    """py-spy on each worker of the server (the processes that hold an ORT session) for ``seconds``."""
    procs = []
    for p in processes(root)[1:]:
        argv = ["py-spy", "record", "-d", str(int(seconds)), "-r", "200", "-p", str(p["pid"]), "-f", "raw"]
        argv += ["-o", f"{path}-{p['pid']}.txt", "--nonblocking"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def markdown(res: dict) -> str:
    m, mem, op = res["model"], res["memory"], res["open"]
    cfg = m.get("config", {})
    bd = mem["breakdown"]
    rows = []
    for x in res["runs"]:
        workers_rss = [p["rss_mb"] for p in x["processes"][1:]] or [x["processes"][0]["rss_mb"]]
        rows.append(
            [
                x["workers"],
                x["connections"],
                x.get("updates_per_request", 1),
                C.fmt(x["updates_per_s"]),
                f"{C.fmt(x['p50_ms'])} / {C.fmt(x['p99_ms'])}",
                x["errors"],
                f"{x['server_cpu_ms_per_update']:.2f} / {x['redis_cpu_ms_per_update']:.2f} / "
                f"{x['client_cpu_ms_per_update']:.2f}",
                ", ".join(f"{v:.0f}" for v in workers_rss),
                f"yes ({x['applied']:,} applied, {x['in_flight_at_stop']} in flight at the stop)"
                if x["exactly_once"]
                else f"NO ({x['series_ahead_of_client']} series ahead, {x['series_behind_client']} behind)",
                f"{x['load_1m'][0]:.1f}-{x['load_1m'][1]:.1f}",
            ]
        )
    g = res["goal"]
    lines = [
        f"{res['series']:,} series of the retail panel model (GRU {cfg.get('num_layers')}x{cfg.get('hidden_size')}, "
        f"lookback {cfg.get('lookback')}, horizon 14, {len(cfg.get('quantiles') or [])} quantiles, {m.get('parameters', 0):,} parameters) open in one "
        f"redis-server {res['redis']} (no persistence); `rnnops serve --workers N` with "
        f"`RNNOPS_SESSION_STORE=redis://...`, 1 ORT thread per worker, nothing pinned; client "
        f"{(res['client'] or 'wrk').split(' Copyright')[0]}, one connection per thread, each owning a share of the "
        + (
            f"series and updating {res['bulk']} of them at random per request (`POST /session-updates`; each "
            if res.get("bulk")
            else "series and updating one at random per request (`POST /sessions/{id}`; "
        )
        + f"one observation, its timestamp, promo and price for the "
        f"next 14 days), closed loop, {res['seconds_per_run']:.0f} s per run"
        + (" (--quick)" if res["quick"] else "")
        + ".",
        "",
        f"Opening: {op['opened']:,} sessions in {op['seconds']:.0f} s ({C.fmt(op['opens_per_s'])}/s, p50 / p99 "
        f"{C.fmt(op['p50_ms'])} / {C.fmt(op['p99_ms'])} ms, 1 worker, {op['errors']} errors, load "
        f"{op['load_1m'][0]:.1f}-{op['load_1m'][1]:.1f}).",
        ""
        + (
            f" The other {res['clone']['cloned']:,} series are copies of these in Redis (each value byte for byte "
            f"under its own key; indexed and expiring as the store does): opening all over HTTP takes longer "
            f"than this run's budget on this machine. With all {res['series']:,}: "
            f"{res['clone']['bytes_per_series']:,.0f} bytes of Redis per series, {res['clone']['keys']:,} keys."
            if res.get("clone")
            else ""
        ),
        "",
        C.md_table(
            [
                "workers",
                "connections",
                "updates per request",
                "updates/s",
                "p50 / p99 ms (per request)",
                "errors",
                "CPU ms/update (server / Redis / client)",
                "worker RSS MB",
                "exactly once",
                "load 1-min",
            ],
            rows,
        ),
        "",
        f"Redis memory: **{mem['bytes_per_series']:,.0f} bytes per series** (INFO used_memory before and after "
        f"opening, divided by the series; {mem['keys']:,} keys; RSS {mem['rss_bytes_per_series']:,.0f} bytes per "
        f"series). A session key: {bd['key_bytes_mean']:,.0f} bytes (MEMORY USAGE, mean of {bd['sample']}), one "
        f"`{bd['encoding']}` string of {bd['value_bytes']:,} bytes: a {bd['fixed_header_bytes']}-byte fixed header, "
        f"{bd['json_header_bytes']} bytes of JSON (`{bd['json_header']}`) and {bd['array_bytes']:,} bytes of arrays; "
        f"the index (sorted set, `{bd['index_encoding']}`) {bd['index_bytes_per_series']:.0f} bytes per series.",
        "",
        "Exactly once: after each run every series' observation count was read back from Redis and compared with "
        "what the client sent it (refused updates not counted): none ahead (applied twice), none behind but those "
        "in flight when the client stopped (sent, answer never read) "
        + ("in every run." if g["exactly_once"] else "**not in every run** (see the table).")
        + " Goals: >= 5,000 updates/s: "
        + f"**{C.fmt(g['updates_per_s'])}** ({(g['at'] or {}).get('workers')} worker(s), "
        + f"{(g['at'] or {}).get('connections')} connections) -> "
        + f"**{'met' if g['met_rate'] else 'not met'}**; p99 < 50 ms at that rate: **{C.fmt(g['p99_ms'])} ms** -> "
        + f"**{'met' if g['met_p99'] else 'not met'}**; <= 4 KB of Redis per series: "
        + f"**{g['bytes_per_series']:,.0f} bytes** -> **{'met' if g['met_memory'] else 'not met'}**.",
    ]
    if not g["met_rate"] and res["runs"]:
        runs = res["runs"]
        cpu = min(x["server_cpu_ms_per_update"] for x in runs)
        others = min(x["redis_cpu_ms_per_update"] + x["client_cpu_ms_per_update"] for x in runs)
        budget = 1000 * C.cpus() / 5000
        lines += [
            "",
            f"Why the rate is missed: a worker spends {cpu:.1f}-"
            f"{max(x['server_cpu_ms_per_update'] for x in runs):.1f} ms of CPU per update (server CPU / updates), "
            f"so {C.cpus()} idle CPUs would give at most ~{1000 * C.cpus() / cpu:,.0f} updates/s. 5,000 updates/s on "
            f"{C.cpus()} CPUs leaves {budget:.1f} ms of CPU per update for the server, Redis and the client together; "
            f"Redis and the client (wrk, on the same CPUs) take {others:.2f} ms of it, which leaves the server "
            f"{budget - others:.2f} ms, {cpu / max(1e-9, budget - others):.1f}x less than it spends. Each update makes 2 "
            "Redis round trips (GETEX; the write-if-unchanged script: SET + ZADD), pipelined with the other "
            "updates of the same event-loop turn; the profile below says where the rest goes. p99 follows the "
            "queue of a closed loop (connections / updates/s) and the other work on the machine.",
        ]
    if not g["met_memory"]:
        lines += [
            "",
            f"Why the memory is missed: a session key takes {bd['key_bytes_mean']:,.0f} bytes for a value of "
            f"{bd['value_bytes']:,}, plus {bd['index_bytes_per_series']:.0f} for the index.",
        ]
    for run_key, parts in (res.get("profile") or {}).items():
        w, c = run_key.split("x")
        lines += [
            "",
            f"Where a worker's time goes ({w} worker(s), {c} connections; py-spy at 200 Hz during the run, which "
            "slows the sampled worker a little; share of the sampled stacks): "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in parts.items())
            + ".",
        ]
    lines += [
        "",
        f"Load average (1 min) at the start / end of the run: {res['load_start']} / {res.get('load_end', '-')} "
        f"({C.cpus()} CPUs, shared with other work: above {C.cpus()} means others used the cores too).",
    ]
    return "\n".join(lines)


def summary(res: dict) -> dict:
    """run_all's summary row."""
    g = res["goal"]
    met = [g["met_rate"], g["met_p99"], g["met_memory"], g["exactly_once"]]
    return {
        "figure": "sessions",
        "headline": f"{res['series']:,} series: {C.fmt(g['updates_per_s'])} updates/s "
        f"({(g['at'] or {}).get('workers')} worker(s)), p99 {C.fmt(g['p99_ms'])} ms; {g['bytes_per_series']:,.0f} bytes of "
        f"Redis per series; exactly once: {'yes' if g['exactly_once'] else 'NO'}",
        "goal": ">= 5,000 updates/s, p99 < 50 ms at that rate, <= 4 KB of Redis per series, exactly once",
        "met": "yes" if all(met) else ("partly" if any(met) else "no"),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5,000 series, 10 s runs (a smoke run)")
    ap.add_argument("--series", type=int, help="open series (default 100,000; 5,000 with --quick)")
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    ap.add_argument("--connections", default="64", help="client connections per run, comma-separated (default 64)")
    ap.add_argument("--seconds", type=float, help="seconds per run (default 30; 10 with --quick)")
    ap.add_argument(
        "--open-http",
        type=int,
        help="open this many series over HTTP and clone them in Redis up to --series (default: all over HTTP)",
    )
    ap.add_argument(
        "--bulk",
        type=int,
        default=0,
        help="N updates per request (POST /session-updates, N different series of the connection's share); "
        "default 0: one per request (POST /sessions/{id})",
    )
    ap.add_argument("--profile-s", type=float, default=0.0, help="py-spy each worker for N s of each run (raw stacks)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-sessions-"))
    res = run(
        args.quick,
        work,
        args.series or (5000 if args.quick else 100_000),
        tuple(int(x) for x in args.workers.split(",")),
        tuple(int(x) for x in args.connections.split(",")),
        args.seconds or (10.0 if args.quick else 30.0),
        profile_s=args.profile_s,
        open_http=args.open_http,
        bulk=args.bulk,
    )
    print(markdown(res))
    C.write_json(args.json, res)


if __name__ == "__main__":
    main()
