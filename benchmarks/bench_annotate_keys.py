"""Annotate latency as an annotator feels it: key press → next item on screen, in Debian's Chromium
(Playwright) against `python app.py` on a fresh DATA_DIR (demo KB, the 48 example mentions queued,
anonymous local writes).

    python benchmarks/bench_annotate_keys.py [--paced 30] [--burst 12] [--gap-ms 150] [--json out.json]

Measured inside the page: a capturing keydown listener takes the key event's timestamp, a
MutationObserver sees the Annotate view switch to another item, and the next animation frame after
that switch counts as "on screen" (key → next item painted). "Server ack" is key → the answer to
that decision arriving in the page (the write is done and the next prefetched items are in).

Paced: one decision, wait for its ack, 200 ms, the next (an annotator who reads every item).
Burst: a key every --gap-ms without waiting for acks (faster than the server: shows whether the
prefetched items keep up; `waited` counts keys that found no prefetched item and had to wait).
Decisions alternate 1 (the top card) and N (NIL). Prints JSON: p50 / p95 / max in ms.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

from bench_app import ARGS, start_app, stop_app  # benchmarks/ is on sys.path when run as a script
from bench_common import write_json

REPO = Path(__file__).resolve().parents[1]

INSTRUMENT = """() => {
  const B = window.__bench = { keys: [], swaps: [], last: null };
  window.addEventListener('keydown', e => B.keys.push(e.timeStamp), true);
  const v = document.getElementById('annot_view');
  B.last = v.dataset.shown;
  new MutationObserver(() => {
    const s = v.dataset.shown;
    if (s === B.last) return;
    B.last = s;
    const dom = performance.now();
    requestAnimationFrame(() => B.swaps.push({ shown: s, dom: dom, frame: performance.now() }));
  }).observe(v, { attributes: true, attributeFilter: ['data-shown'] });
}"""


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def summary(xs: list[float]) -> dict:
    return {
        "n": len(xs),
        "p50": round(statistics.median(xs), 1),
        "p95": round(pct(xs, 0.95), 1),
        "max": round(max(xs), 1),
        "values": [round(x, 1) for x in xs],
    }


def wait_swap(pg, n_swaps: int) -> dict:
    """The first swap after the n_swaps-th to show an item (not the "saving…" placeholder)."""
    pg.wait_for_function(
        "n => window.__bench.swaps.slice(n).some(s => s.shown.startsWith('m') || s.shown === 'empty')",
        arg=n_swaps,
    )
    swaps = pg.evaluate("n => window.__bench.swaps.slice(n)", n_swaps)
    return {"item": next(s for s in swaps if s["shown"].startswith("m") or s["shown"] == "empty"), "all": swaps}


def run(url: str, paced: int, burst: int, gap_ms: int) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=os.environ.get("MIMIC_CHROMIUM", "/usr/bin/chromium"), args=ARGS)
        pg = b.new_page(viewport={"width": 1400, "height": 1600})
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.get_by_role("tab", name="Annotate").click()
        pg.wait_for_selector("#annot_view .mention-item")
        pg.wait_for_timeout(1000)  # the page's first payload is in (the prefetched items with it)
        pg.evaluate(INSTRUMENT)
        pg.locator("#annot_view .annot-meta").click()  # focus outside any text field
        swap_ms, ack_ms = [], []
        for i in range(paced):
            n_keys, n_swaps = pg.evaluate("[window.__bench.keys.length, window.__bench.swaps.length]")
            n_log = pg.evaluate("window.mimicAnnotate.state.log.length")
            pg.keyboard.press("1" if i % 2 == 0 else "n")
            sw = wait_swap(pg, n_swaps)
            key_at = pg.evaluate("n => window.__bench.keys[n]", n_keys)
            swap_ms.append(sw["item"]["frame"] - key_at)
            pg.wait_for_function(
                "n => { const l = window.mimicAnnotate.state.log; return l.length > n && l[l.length - 1].acked_at; }",
                arg=n_log,
            )
            ack_ms.append(
                pg.evaluate("() => { const l = window.mimicAnnotate.state.log; return l[l.length - 1].acked_at; }")
                - key_at
            )
            pg.wait_for_timeout(200)
        out["paced_key_to_next_item_painted_ms"] = summary(swap_ms)
        out["paced_key_to_server_ack_ms"] = summary(ack_ms)
        burst_ms, waited = [], 0
        for i in range(burst):
            n_keys, n_swaps = pg.evaluate("[window.__bench.keys.length, window.__bench.swaps.length]")
            pg.keyboard.press("1" if i % 2 == 0 else "n")
            sw = wait_swap(pg, n_swaps)
            waited += any(s["shown"] == "waiting" for s in sw["all"])
            burst_ms.append(sw["item"]["frame"] - pg.evaluate("n => window.__bench.keys[n]", n_keys))
            if sw["item"]["shown"] == "empty":
                break
            pg.wait_for_timeout(gap_ms)
        out[f"burst_key_to_next_item_painted_ms (a key every {gap_ms} ms)"] = summary(burst_ms)
        out["burst_keys_that_waited_for_the_server"] = waited
        pg.wait_for_function("() => window.mimicAnnotate.state.log.slice(-1)[0].acked_at", timeout=120_000)
        last = pg.evaluate(
            "() => window.mimicAnnotate.state.log.slice(-1)[0].acked_at - window.__bench.keys.slice(-1)[0]"
        )
        out["burst_last_key_to_its_server_ack_ms"] = round(last, 1)  # every burst decision written by then
        progress = pg.inner_text("#annot_progress")  # "... you: N decided ..." (none lost on the way)
        out["decisions_sent"] = paced + len(burst_ms)
        out["decisions_stored"] = int(re.search(r"you: (\d+) decided", progress).group(1))
        b.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paced", type=int, default=30)
    ap.add_argument("--burst", type=int, default=12)
    ap.add_argument("--gap-ms", type=int, default=150)
    ap.add_argument("--port", type=int, default=7873)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.paced + a.burst > 48:
        sys.exit("--paced + --burst must stay within the 48 example mentions of the queue")
    data = Path(tempfile.mkdtemp(prefix="mimic-bench-keys-"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    proc, started = start_app(data, a.port)
    try:
        out = {"start_s (fresh DATA_DIR)": round(started, 2)}
        out.update(run(f"http://127.0.0.1:{a.port}/", a.paced, a.burst, a.gap_ms))
    finally:
        stop_app(proc)
    out["load_average_before"] = load_before
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out["cpu_threads"] = os.cpu_count()
    print(write_json(out, a.json))


if __name__ == "__main__":
    main()
