"""App latency as a user sees it: process start to serving, Link click to candidates rendered, and
Inspect for one candidate, measured in Debian's Chromium (Playwright) against `python app.py`.

    python benchmarks/bench_app.py [--runs 10] [--starts 3] [--json out.json]
    python benchmarks/bench_app.py --starts 5 --runs 0 [--repo /path/to/another/tree]   # starts only

Start: a fresh DATA_DIR is used for the first start (demo KB imported, index built, example queue
predicted), then the app is restarted `--starts` times on the same DATA_DIR (the index exists).
"Serving" = the first HTTP 200 from the page; "linking" = the first `/link` call (the documented
API, sent as soon as the page answers) returning candidates: the model may load after the page
serves (app/launch.py), and a link that arrives early waits for it. `--repo` runs another checkout's
`app.py` (a before/after comparison on the same machine); the load average is recorded per start.
Link: from the click on Link until the status line
reports the candidates and the table shows them. Inspect: from choosing a candidate in the Inspect
tab until its heatmap is drawn (top candidates carry their explanation; others are computed then).
Prints min / median / max per figure (ms or s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_common import write_json  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def start_app(data_dir: Path, port: int, repo: Path = REPO) -> tuple[subprocess.Popen, float, float]:
    """-> (the process, seconds to the first HTTP 200, to the first /link call answered)."""
    env = dict(
        os.environ,
        DATA_DIR=str(data_dir),
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_SSR_MODE="False",
    )
    env.pop("MIMIC_USERS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    serving = time.perf_counter() - t0
                    break
        except OSError:
            time.sleep(0.05)
        if time.perf_counter() - t0 > 300:
            raise RuntimeError("app did not start within 300 s")
    first_link(url)
    return proc, serving, time.perf_counter() - t0


def first_link(url: str, timeout: float = 300) -> dict:
    """One `/link` call through Gradio's REST route (what gradio_client sends), waited for."""
    import requests

    r = requests.post(url + "gradio_api/call/link", json={"data": [None, "Chelsea won 2-1", "Chelsea"]}, timeout=30)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    event = None
    with requests.get(url + f"gradio_api/call/link/{event_id}", stream=True, timeout=timeout) as res:
        for line in res.iter_lines():
            if line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:") and event in ("complete", "error"):
                data = json.loads(line[5:])
                if event == "error" or not data or not data[0].get("candidates"):
                    raise RuntimeError(f"/link answered {event}: {str(data)[:200]}")
                return data[0]
    raise RuntimeError("/link: the stream ended without an answer")


def free_port() -> int:
    """A port nobody listens on now (a fixed one may be another user's app on a shared machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_app(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def stats(xs: list[float], nd: int = 1) -> dict:
    return {
        "min": round(min(xs), nd),
        "median": round(statistics.median(xs), nd),
        "max": round(max(xs), nd),
        "n": len(xs),
        "values": [round(x, nd) for x in xs],
    }


def browser_figures(url: str, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO))
    from mimic.data.jsonl import load_jsonl_dataset

    examples = load_jsonl_dataset(REPO / "assets" / "demo_kb").split("examples")
    link_ms, inspect_top_ms, inspect_other_ms = [], [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = b.new_page(viewport={"width": 1400, "height": 1600})
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.wait_for_selector("#link_sentence textarea")
        for i in range(runs):
            m = examples[(i * 5) % len(examples)]
            if m.image:
                pg.set_input_files("#link_image input[type=file]", m.image)
                pg.wait_for_timeout(300)
            else:
                btn = pg.locator("#link_image button[aria-label='Remove Image']")
                if btn.count():
                    btn.click()
            pg.fill("#link_sentence textarea", m.sentence)
            pg.fill("#link_mention textarea, #link_mention input", m.mention)
            before = pg.inner_text("#link_status").strip()
            t = time.perf_counter()
            pg.click("#link_btn")
            pg.wait_for_function(
                "b => { const e = document.querySelector('#link_status'); if (!e) return false;"
                " const t = e.innerText.trim();"
                " return t !== b && /^(OK ·|Error:)/.test(t) && !/processing/.test(t); }",
                arg=before,
            )
            link_ms.append((time.perf_counter() - t) * 1000)
            status = pg.inner_text("#link_status").strip()
            if not status.startswith("OK"):
                raise RuntimeError(f"example {m.id}: {status}")
            pg.get_by_role("tab", name="Inspect").click()
            # the dropdown holds the top candidate after a link: choose #2 (explained with the top 3)
            # and #7 (explained on demand)
            for which, sink in ((1, inspect_top_ms), (6, inspect_other_ms)):
                opts = pg.locator("#inspect_candidate")
                note_before = pg.inner_text("#inspect_note").strip()
                t = time.perf_counter()
                opts.locator("input").click()
                pg.locator("ul[role=listbox] li").nth(which).click()
                pg.wait_for_function(
                    "b => { const e = document.querySelector('#inspect_note'); if (!e) return false;"
                    " const t = e.innerText.trim();"
                    " return t !== b && t.includes('rank') && !/processing/.test(t) && "
                    "document.querySelector('#inspect_heatmap .js-plotly-plot'); }",
                    arg=note_before,
                )
                sink.append((time.perf_counter() - t) * 1000)
            pg.get_by_role("tab", name="Link").click()
        b.close()
    return {
        "link_click_to_candidates_ms": stats(link_ms),
        "inspect_top3_candidate_ms": stats(inspect_top_ms),
        "inspect_candidate_7_ms (explained on demand)": stats(inspect_other_ms),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="links + inspects in the browser (0: none)")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose app.py runs (default: this one)")
    ap.add_argument("--json")
    a = ap.parse_args()
    a.port = a.port or free_port()
    data = Path(tempfile.mkdtemp(prefix="mimic-bench-app-"))
    load0 = [round(x, 2) for x in os.getloadavg()]
    proc, first, first_linked = start_app(data, a.port, a.repo)
    stop_app(proc)
    serving, linking, loads = [], [], []
    for i in range(a.starts):
        loads.append(round(os.getloadavg()[0], 2))
        proc, s, linked = start_app(data, a.port, a.repo)
        serving.append(s)
        linking.append(linked)
        if i < a.starts - 1 or a.runs <= 0:
            stop_app(proc)
    try:
        out = {
            "repo": str(a.repo),
            "first_start_s (fresh DATA_DIR: KB import, index build, example queue)": round(first, 2),
            "first_start_to_first_link_s": round(first_linked, 2),
            "start_to_serving_s (index exists: first HTTP 200)": stats(serving, 2),
            "start_to_first_link_s (index exists: first /link answered)": stats(linking, 2),
            "loadavg_1min_at_each_start": loads,
        }
        if a.runs > 0:
            out.update(browser_figures(f"http://127.0.0.1:{a.port}/", a.runs))
    finally:
        if a.runs > 0:
            stop_app(proc)
    out["cpu_threads"] = os.cpu_count()
    out["loadavg_start_end"] = [load0, [round(x, 2) for x in os.getloadavg()]]
    print(write_json(out, a.json))


if __name__ == "__main__":
    main()
