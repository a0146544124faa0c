#!/usr/bin/env python3
"""What shardline's latency histograms gathered between two /metrics scrapes.

The one reader of scraped histograms for scripts/bench.py (latencies after a warm-up), scripts/demo.sh
(the measured part) and scripts/profile-rate.sh (a steady window). Quantiles are interpolated inside a
bucket, as Prometheus does; past the top finite bucket only a bound is known, so they are None there
and `shown` prints "> top".

  metrics_window.py BEFORE AFTER      prints every histogram's count, mean, p50, p99 and p999 (ms)
"""
import re
import sys

HIST = re.compile(r'^(shardline_\w+_seconds)_(bucket|sum|count)\{([^}]*)\} (\S+)$')
QUANTILES = (("50", 0.5), ("99", 0.99), ("999", 0.999))


def histograms(text):
    """{(name, stage or ""): {"buckets": {le_ms: cumulative}, "sum": s, "count": n}}, summed over shards
    (and over the steps of shardline_step_seconds)."""
    out = {}
    for line in text.splitlines():
        m = HIST.match(line.strip())
        if not m:
            continue
        name, kind, labels, value = m.groups()
        lab = dict(kv.split("=", 1) for kv in labels.split(",") if "=" in kv)
        key = (name, lab.get("stage", "").strip('"'))
        h = out.setdefault(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        if kind == "bucket":
            le = lab["le"].strip('"')
            if le != "+Inf":
                h["buckets"][float(le) * 1000] = h["buckets"].get(float(le) * 1000, 0.0) + float(value)
        else:
            h[kind] += float(value)
    return out


def percentile_from_buckets(buckets, total, q):
    """The q-quantile (ms) of cumulative (upper bound ms, count) buckets; None past the top bucket."""
    rank, lo, below = q * total, 0.0, 0
    for le, cum in buckets:
        if cum >= rank and cum > below:
            return lo + (le - lo) * (rank - below) / (cum - below)
        lo, below = le, cum
    return None


def window(before, after):
    """{short name: {"count", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "top_ms", "buckets"}} of what each
    histogram gathered between the scrapes `before` and `after` (texts). Short names: the stage for
    shardline_stage_seconds, else the metric without its prefix and unit (end_to_end, write, decode, step)."""
    a, b = histograms(before), histograms(after)
    out = {}
    for key, hb in b.items():
        ha = a.get(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        n = hb["count"] - ha["count"]
        if n <= 0:
            continue
        buckets = sorted((le, c - ha["buckets"].get(le, 0.0)) for le, c in hb["buckets"].items())
        name = key[1] or key[0].replace("shardline_", "").replace("_seconds", "")
        out[name] = {"count": n, "mean_ms": (hb["sum"] - ha["sum"]) / n * 1000,
                     **{f"p{k}_ms": percentile_from_buckets(buckets, n, q) for k, q in QUANTILES},
                     "top_ms": buckets[-1][0] if buckets else None, "buckets": buckets}
    return out


def shown(h, key, unit="ms", scale=1.0):
    """One quantile of a `window` entry for people: "1.23 ms", "> 15000 ms" past the top bucket."""
    v = h.get(key)
    if v is None:
        return f"> {(h.get('top_ms') or 0) * scale:.0f} {unit}"
    return f"{v * scale:.2f} {unit}"


def summary_line(h, unit="ms", scale=1.0):
    return "  ".join(f"p{k} {shown(h, f'p{k}_ms', unit, scale)}" for k, _ in QUANTILES)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    w = window(open(sys.argv[1]).read(), open(sys.argv[2]).read())
    for name in sorted(w):
        h = w[name]
        print(f"  {name:12s} n={h['count']:9.0f}  mean {h['mean_ms']:9.3f} ms  {summary_line(h)}")
