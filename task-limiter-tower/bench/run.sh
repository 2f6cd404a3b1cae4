#!/usr/bin/env bash
# The benchmark of issue 20: a release-built axum server (examples/bench_server.rs) driven by
# wrk on 127.0.0.1, one server process per run, runs interleaved (each round runs every
# configuration once, the compared layers side by side), medians over the rounds.
#
#   bash task-limiter-tower/bench/run.sh            # 5 s per run, 3 rounds: about 12 minutes
#   DURATION=2 ROUNDS=1 bash task-limiter-tower/bench/run.sh   # a quick look
#
# Throughput: no limit; tower ConcurrencyLimitLayer; GlobalConcurrencyLimitLayer + LoadShed;
# task-limiter-tower's LimitLayer; spawn per request (`limiter.spawn(handler).await`); at 16
# and 256 connections, a handler that yields once or sleeps 1 ms, limits 8 and 64.
# Noisy neighbour: one tenant on 200 connections and five on 2 each, a handler that sleeps
# 5 ms, limit 8: LimitLayer keyed by tenant, tower's FIFO ConcurrencyLimitLayer, firq-tower
# 0.1.3, and the five quiet tenants alone on an idle server (the keyed LimitLayer).
# Prints markdown tables (also written to $OUT/tables.md) with the load average around them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-8088}
OUT=${OUT:-$(mktemp -d /tmp/tower-bench.XXXXXX)}
mkdir -p "$OUT"

command -v wrk >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }
cargo build --release -p task-limiter-tower --example bench_server
BIN="${CARGO_TARGET_DIR:-target}/release/examples/bench_server"

SERVER=
start_server() {
  "$BIN" --port "$PORT" "$@" >/dev/null 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0
    sleep 0.05
  done
  echo "server did not start: $*" >&2
  exit 1
}
stop_server() {
  kill "$SERVER"
  wait "$SERVER" 2>/dev/null || true
}
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true' EXIT

echo "load before: $(uptime)" | tee "$OUT/load.txt"
for round in $(seq "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  for conns in 16 256; do
    for handler in yield sleep1; do
      for limit in 8 64; do
        for layer in none tower shed limiter spawn; do
          # No limit is one configuration whatever the limit: run it once, file it under both.
          if [ "$layer" = none ] && [ "$limit" != 8 ]; then continue; fi
          start_server --layer "$layer" --limit "$limit" --handler "$handler"
          wrk -t2 -c"$conns" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/" \
            > "$OUT/tp_${layer}_${conns}_${handler}_${limit}_${round}.txt"
          stop_server
        done
      done
    done
  done
  for variant in limiter-keys tower firq idle; do
    layer=$variant
    [ "$variant" = idle ] && layer=limiter-keys
    start_server --layer "$layer" --limit 8 --handler sleep5
    pids=()
    if [ "$variant" != idle ]; then
      wrk -t1 -c200 -d"${DURATION}s" --latency -H "x-tenant: noisy" "http://127.0.0.1:$PORT/" \
        > "$OUT/nn_${variant}_noisy_${round}.txt" &
      pids+=($!)
    fi
    for q in 1 2 3 4 5; do
      wrk -t1 -c2 -d"${DURATION}s" --latency -H "x-tenant: quiet-$q" "http://127.0.0.1:$PORT/" \
        > "$OUT/nn_${variant}_quiet${q}_${round}.txt" &
      pids+=($!)
    done
    wait "${pids[@]}"
    stop_server
  done
done
echo "load after: $(uptime)" | tee -a "$OUT/load.txt"

python3 - "$OUT" "$DURATION" "$ROUNDS" <<'PY' | tee "$OUT/tables.md"
import glob, os, re, statistics, sys

out, duration, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def secs(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

def parse(path):
    text = open(path).read()
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    for p in ("50", "99"):
        r["p" + p] = secs(re.search(rf"^\s+{p}%\s+(\S+)", text, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["ok"] = 1.0 - (int(bad.group(1)) if bad else 0) / max(total, 1)
    return r

def median(paths, key):
    return statistics.median(parse(p)[key] for p in paths)

def ms(s):
    return f"{s * 1e3:.1f}" if s < 0.1 else f"{s * 1e3:.0f}"

layers = ["none", "tower", "shed", "limiter", "spawn"]
names = {"none": "no limit", "tower": "tower `ConcurrencyLimit`",
         "shed": "`GlobalConcurrencyLimit` + `LoadShed`", "limiter": "task-limiter-tower",
         "spawn": "spawn per request"}
print(f"Throughput: requests/s (p50 / p99 ms), medians of {rounds} rounds of {duration} s.\n")
print("| conns | handler | limit | " + " | ".join(names[l] for l in layers) + " | task-limiter-tower / tower |")
print("|" + " --- |" * (4 + len(layers)))
for conns in ("16", "256"):
    for handler in ("yield", "sleep1"):
        for limit in ("8", "64"):
            cells, rps = [], {}
            for layer in layers:
                lim = "8" if layer == "none" else limit
                paths = glob.glob(f"{out}/tp_{layer}_{conns}_{handler}_{lim}_*.txt")
                if not paths:
                    cells.append("-")
                    continue
                rps[layer] = median(paths, "rps")
                cell = f"{rps[layer]:,.0f} ({ms(median(paths, 'p50'))} / {ms(median(paths, 'p99'))})"
                ok = median(paths, "ok")
                if ok < 0.999:
                    cell += f", {ok:.0%} ok"
                cells.append(cell)
            ratio = rps["limiter"] / rps["tower"] if "limiter" in rps and "tower" in rps else float("nan")
            label = {"yield": "yields once", "sleep1": "sleeps 1 ms"}[handler]
            print(f"| {conns} | {label} | {limit} | " + " | ".join(cells) + f" | {ratio:.2f}x |")

print(f"\nNoisy neighbour: one tenant on 200 connections, five quiet tenants on 2 each, handler "
      f"sleeps 5 ms, limit 8; medians of {rounds} rounds of {duration} s. Quiet p99 is the worst "
      f"of the five tenants' p99 in a round.\n")
print("| server | quiet p50 ms | quiet p99 ms | quiet req/s | noisy req/s | total req/s |")
print("| --- | --- | --- | --- | --- | --- |")
variants = {"limiter-keys": "task-limiter-tower, keyed by tenant", "tower": "tower `ConcurrencyLimit` (FIFO)",
            "firq": "firq-tower 0.1.3", "idle": "idle server (quiet tenants alone)"}
for variant, name in variants.items():
    p50s, p99s, qrps, nrps = [], [], [], []
    for r in range(1, rounds + 1):
        quiet = [parse(p) for p in glob.glob(f"{out}/nn_{variant}_quiet*_{r}.txt")]
        if not quiet:
            continue
        p50s.append(statistics.median(q["p50"] for q in quiet))
        p99s.append(max(q["p99"] for q in quiet))
        qrps.append(sum(q["rps"] for q in quiet))
        noisy = glob.glob(f"{out}/nn_{variant}_noisy_{r}.txt")
        nrps.append(parse(noisy[0])["rps"] if noisy else 0.0)
    if not p50s:
        continue
    q, n = statistics.median(qrps), statistics.median(nrps)
    print(f"| {name} | {ms(statistics.median(p50s))} | {ms(statistics.median(p99s))} | {q:,.0f} | "
          f"{n:,.0f} | {q + n:,.0f} |")
print()
print(open(f"{out}/load.txt").read().strip().replace("\n", "  \n"))
PY
echo "raw wrk outputs in $OUT"
