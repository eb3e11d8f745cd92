"""The first Inspect of a session, in a real browser (Debian's Chromium driven by Playwright) against
`python app.py`. Prints JSON.

    python benchmarks/bench_first_inspect.py [--starts 2] [--sessions 2] [--idle 3] [--repo TREE] [--json out.json]

A first start on a fresh DATA_DIR builds the index; then, `--starts` times, the app is started on it
and `--sessions` fresh browser contexts (an empty cache each, like a new visitor) open the page, sit
idle `--idle` seconds (a person reading the page), link an example through the Link tab, and open the
Inspect tab: timed from the click on the tab until its heatmap is drawn by plotly.js (the tab draws
the top candidate on opening). The first session of each start is also the server's first Inspect
(its first plotly figures); later sessions are new visitors of a warm server. A second Inspect in the
same session (another candidate, picked from the list) is timed as the warm reference. `--repo`
runs another checkout's app.py (the tree before a change), on the same machine, for a comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import ARGS, REPO, free_port, start_app, stats, stop_app  # noqa: E402
from bench_common import write_json  # noqa: E402

# the Inspect tab shown (not the off-screen layout studio.css gives it while hidden), its note about a
# candidate and not the one before, no progress text, and plotly's heatmap drawn
HEATMAP_DRAWN = (
    "b => { const e = document.querySelector('#inspect_note'); const p = document.querySelector('#tab_inspect');"
    " if (!e || !p || getComputedStyle(p).visibility !== 'visible' || p.getBoundingClientRect().left < 0) return false;"
    " const t = e.innerText.trim();"
    " return t !== b && t.includes('rank') && !/processing/.test(t) &&"
    " !!document.querySelector('#inspect_heatmap .js-plotly-plot .main-svg'); }"
)


def session(browser, url: str, idle: float) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1600})
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)
    t = time.perf_counter()
    pg.goto(url)
    pg.wait_for_selector("#link_sentence textarea")
    loaded = time.perf_counter() - t
    pg.wait_for_timeout(idle * 1000)
    pg.fill("#link_sentence textarea", "Chelsea won 2-1 at Stamford Bridge")
    pg.fill("#link_mention textarea, #link_mention input", "Chelsea")
    t = time.perf_counter()
    pg.click("#link_btn")
    pg.wait_for_function(
        "() => { const e = document.querySelector('#link_status'); return e && /^OK ·/.test(e.innerText.trim()); }"
    )
    link_ms = (time.perf_counter() - t) * 1000
    note = pg.inner_text("#inspect_note").strip() if pg.locator("#inspect_note").count() else ""
    t = time.perf_counter()
    pg.get_by_role("tab", name="Inspect").click()
    pg.wait_for_function(HEATMAP_DRAWN, arg=note)
    first_ms = (time.perf_counter() - t) * 1000
    note = pg.inner_text("#inspect_note").strip()
    t = time.perf_counter()
    pg.locator("#inspect_candidate input").click()
    pg.locator("ul[role=listbox] li").nth(1).click()
    pg.wait_for_function(HEATMAP_DRAWN, arg=note)
    second_ms = (time.perf_counter() - t) * 1000
    ctx.close()
    return {"page_loaded_s": round(loaded, 2), "link_ms": link_ms, "first_inspect_ms": first_ms, "second_ms": second_ms}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--idle", type=float, default=3.0, help="seconds on the page before the link")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--json")
    a = ap.parse_args()
    a.port = a.port or free_port()
    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="mimic-bench-inspect-"))
    load0 = [round(x, 2) for x in os.getloadavg()]
    proc, _, _ = start_app(data, a.port, a.repo)  # the first start builds the index
    stop_app(proc)
    url = f"http://127.0.0.1:{a.port}/"
    cold, new_visitor, second, links, loads = [], [], [], [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for _ in range(a.starts):
            proc, _, _ = start_app(data, a.port, a.repo)  # serving and linking
            try:
                for i in range(a.sessions):
                    loads.append(round(os.getloadavg()[0], 2))
                    r = session(b, url, a.idle)
                    (cold if i == 0 else new_visitor).append(r["first_inspect_ms"])
                    second.append(r["second_ms"])
                    links.append(r["link_ms"])
            finally:
                stop_app(proc)
        b.close()
    out = {
        "repo": str(a.repo),
        "first_inspect_ms (first session after a start: new browser, server's first figures)": stats(cold),
        "first_inspect_ms (later sessions: new browser, warm server)": stats(new_visitor) if new_visitor else None,
        "second_inspect_ms (same session, another candidate)": stats(second),
        "link_click_to_candidates_ms": stats(links),
        "idle_s_before_link": a.idle,
        "loadavg_1min_per_session": loads,
        "loadavg_start_end": [load0, [round(x, 2) for x in os.getloadavg()]],
        "cpu_threads": os.cpu_count(),
    }
    print(write_json(out, a.json))


if __name__ == "__main__":
    main()
