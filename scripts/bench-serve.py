#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server (minfer serve, llama-server): aggregate generated
tokens/s, requests/s, time to first token and inter-token latency (p50/p99) at several
concurrencies, in one run. Standard library only; streaming chat requests with ignore_eos so
every request generates exactly --max-tokens tokens. Traffic goes only to the given URL.

    scripts/bench-serve.py http://127.0.0.1:8080 --concurrency 1,4,8 --requests 8 --max-tokens 64
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

TOPICS = ["the sea", "a cat", "winter", "bread", "rivers", "the moon", "trains", "music",
          "forests", "coffee", "bridges", "clouds", "chess", "gardens", "rain", "mountains"]


def one(url, i, max_tokens):
    """One streamed request: (ttft, [inter-token gaps], tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {"messages": [{"role": "user",
                          "content": f"Write a long story about {TOPICS[i % len(TOPICS)]} ({i})."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]}")
    times, tokens = [], None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices", []):
            if c.get("delta", {}).get("content"):
                times.append(time.perf_counter())
    conn.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    return (times[0] - t0 if times else float("nan")), gaps, tokens or len(times)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def level(url, conc, requests, max_tokens):
    """`conc` clients, each sending `requests` requests one after the other."""
    results, lock = [], threading.Lock()

    def client(c):
        for k in range(requests):
            res = one(url, c * requests + k, max_tokens)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(c,)) for c in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r[2] for r in results)
    ttft = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    return {"concurrency": conc, "requests": len(results), "wall_s": wall,
            "req_s": len(results) / wall, "tok_s": toks / wall,
            "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
            "itl_p50_ms": 1e3 * pct(gaps, 50), "itl_p99_ms": 1e3 * pct(gaps, 99)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    one(a.url, 999, 4)  # warm-up
    rows = [level(a.url, int(c), a.requests, a.max_tokens) for c in a.concurrency.split(",")]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    base = rows[0]["tok_s"]
    print("| streams | requests | req/s | tok/s | × 1st row | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
              f"{r['tok_s'] / base:.2f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
              f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
