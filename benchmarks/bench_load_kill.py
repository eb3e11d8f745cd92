"""The load/kill experiment of issue 18: concurrent annotators, a SIGKILL of the server mid-stream,
a restart on the same DATA_DIR, and retries of the cut calls with their request ids. Prints JSON.

    python benchmarks/bench_load_kill.py [--clients 8] [--users 4] [--seconds 60] [--json out.json]

1. `python app.py` starts as a subprocess on 127.0.0.1 (a free port) with a fresh temporary DATA_DIR
   and `--users` signed-in annotators (argon2 hashes in MIMIC_USERS); nothing leaves the loopback.
2. `--clients` threads (spread over the users, like browser tabs) sign in (all at once: the sign-in
   guard lets 5 attempts per address be in flight and answers the others 429, so those wait 0.25 s
   and sign in again; counted in first_sign_in_refusals), then annotate the demo queue's mentions
   through the documented `/annotate` endpoint (Gradio's REST route `/gradio_api/call/annotate`,
   raw HTTP with timeouts), each call with a client request id of its own, back to back; a revisit
   of a mention changes the decision, so every call is a write.
3. At half of `--seconds` the server's process group gets SIGKILL; a new server starts at once on
   the same DATA_DIR and port. A client whose call was cut (connection refused or reset, stream
   ended without an answer) signs in again and resends the same call with the same request id
   until it is acknowledged. The second half of `--seconds` runs after the server serves again.
4. The server is stopped and the store is checked, without the start-up reconciliation first:
   lost (an acknowledged request id missing from the database, or stored under another annotation
   id or with other values), duplicated (a request id stored or journaled more than once, or an
   annotation of this run that no client sent), journal = database (the journal's annotation
   request ids equal the database's, and the store's own `reconcile()` then finds nothing to
   re-apply or re-journal), SQLite's integrity check, one current decision per (mention, annotator).

Reported: acknowledged, stored, lost, duplicated, journal_matches_db, restart_to_serving_s (SIGKILL
to the restarted server's first HTTP 200; the new process is started right after the kill),
restart_to_first_ack_s (to the first annotation acknowledged by the new server), the app's own
start time from its log, annotate latency (p50 / p95 / max of the calls that were not cut), cut
calls and how many of them had committed before the kill (their retry returned the stored
annotation), and the machine's load average (os.getloadavg) at start and end.

`tests/test_faults.py` runs the same experiment, shorter (`run_load_kill`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests

RID_PREFIX = "loadkill"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the server --------------------------------------------------------------------------------------
class AppServer:
    """`python app.py` in its own process group, on 127.0.0.1:`port`, its output in `log_path`."""

    def __init__(self, data_dir: Path, port: int, users_env: str, log_path: Path, env: dict | None = None):
        self.data_dir, self.port, self.log_path = Path(data_dir), port, Path(log_path)
        self.url = f"http://127.0.0.1:{port}/"
        base = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_") and k != "DATABASE_URL"}
        self.env = {
            **base,
            "DATA_DIR": str(self.data_dir),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_SSR_MODE": "False",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "MIMIC_USERS": users_env,
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_serving(self, timeout: float = 300.0) -> float:
        """Seconds from `start()` to the first HTTP 200 of the page."""
        assert self.proc is not None
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; log: {self.log_tail()}")
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    return time.perf_counter() - self.started_at
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the app did not serve within {timeout:.0f} s; log: {self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used so far (Linux /proc), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL to the whole process group (what an OOM kill or a pulled plug does)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 2000) -> str:
        return self.log_text()[-n:]


# -- a client of /annotate ------------------------------------------------------------------------
class Cut(Exception):
    """The call got no answer: connection refused or reset, a timeout, the stream ended early, or
    the server is (re)starting (401 after a restart: the session died with the old process)."""


class Refused(Exception):
    """The server answered with an error (the call was processed and refused)."""


class AnnotateClient:
    """Raw HTTP client of the documented `/annotate` endpoint (signed in; timeouts on every call)."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 60.0):
        self.url, self.user, self.password, self.timeout = url, user, password, timeout
        self.session = requests.Session()

    def login(self) -> None:
        try:
            r = self.session.post(
                self.url + "login", data={"username": self.user, "password": self.password}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise Cut(f"login: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise Cut(f"login: HTTP {r.status_code}")

    def annotate(self, mention: str, decision: str, entity: str, request_id: str) -> int:
        """The stored annotation's id (Cut / Refused otherwise)."""
        data = [mention, decision, entity, self.user, request_id]
        try:
            r = self.session.post(self.url + "gradio_api/call/annotate", json={"data": data}, timeout=self.timeout)
            if r.status_code in (401, 403) or r.status_code >= 500:
                raise Cut(f"join: HTTP {r.status_code}")
            if r.status_code != 200:
                raise Refused(f"join: HTTP {r.status_code} {r.text[:200]}")
            event_id = r.json()["event_id"]
            with self.session.get(
                self.url + f"gradio_api/call/annotate/{event_id}", stream=True, timeout=self.timeout
            ) as resp:
                if resp.status_code != 200:
                    raise Cut(f"result: HTTP {resp.status_code}")
                event = None
                for line in resp.iter_lines(decode_unicode=True):
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event in ("complete", "error"):
                        payload = json.loads(line[5:])
                        if event == "complete":
                            return int(payload[0])
                        raise Refused(str(payload))
        except (requests.RequestException, ValueError) as exc:
            raise Cut(type(exc).__name__) from None
        raise Cut("the stream ended without an answer")


@dataclass
class Call:
    client: int
    request_id: str
    user: str
    mention: str
    decision: str
    entity: str
    annotation_id: int | None = None
    sent_at: float = 0.0  # perf_counter
    acked_at: float | None = None
    latency_s: float | None = None  # of an uncut call
    attempts: int = 1
    cut: str | None = None  # why the first attempt got no answer
    error: str | None = None


@dataclass
class LoadKillConfig:
    clients: int = 8
    users: int = 4
    seconds: float = 60.0  # annotating time: half before the kill, half after the restart serves
    data_dir: Path | None = None  # default: a new temporary folder
    port: int | None = None
    serving_timeout: float = 300.0
    retry_for: float = 300.0  # how long a cut call is retried before it counts as unacknowledged
    env: dict = field(default_factory=dict)  # extra environment for the server


def _mentions() -> list[str]:
    lines = (REPO / "assets" / "demo_kb" / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    return [f"example:{json.loads(x)['id']}" for x in lines if x.strip()]


def _users(n: int) -> tuple[dict[str, str], str]:
    """{name: password} and the MIMIC_USERS value (argon2 hashes, as an operator would set it)."""
    from argon2 import PasswordHasher

    ph = PasswordHasher()
    users = {f"lk{i}": f"lk{i}-pw-{os.getpid()}" for i in range(n)}
    return users, ",".join(f"{u}:{ph.hash(p)}" for u, p in users.items())


def _client_loop(
    ci: int,
    user: str,
    password: str,
    url: str,
    mentions: list[str],
    calls: list[Call],
    stop: threading.Event,
    cfg,
    login_refusals: list[str],
) -> None:
    client = AnnotateClient(url, user, password)
    deadline = time.perf_counter() + 60
    while True:  # all clients sign in at once: the sign-in guard lets 5 attempts per address be in flight
        try:
            client.login()
            break
        except Cut as exc:
            login_refusals.append(str(exc))
            if time.perf_counter() > deadline:
                break  # the first call's retry signs in again
            time.sleep(0.25)
    seq = 0
    while not stop.is_set():
        # mention k; the decision changes from one round over the mentions to the next, so a revisit
        # supersedes (a real write) rather than repeating the current decision (which writes nothing)
        k, rnd = ci * 7 + seq, (ci * 7 + seq) // len(mentions) + ci
        decision, entity = ("nil", "") if (k + rnd) % 5 == 0 else ("entity", f"D{1 + (k * 5 + rnd * 11) % 48:03d}")
        call = Call(ci, f"{RID_PREFIX}-c{ci}-{seq}", user, mentions[k % len(mentions)], decision, entity)
        call.sent_at = time.perf_counter()
        calls.append(call)
        try:
            call.annotation_id = client.annotate(call.mention, decision, entity, call.request_id)
            call.acked_at = time.perf_counter()
            call.latency_s = call.acked_at - call.sent_at
        except Refused as exc:
            call.error = str(exc)
        except Cut as exc:
            call.cut = str(exc)
            deadline = time.perf_counter() + cfg.retry_for
            while time.perf_counter() < deadline:  # the same call, the same request id, until acknowledged
                time.sleep(0.25)
                call.attempts += 1
                try:
                    client.login()
                    call.annotation_id = client.annotate(call.mention, decision, entity, call.request_id)
                    call.acked_at = time.perf_counter()
                    break
                except Cut:
                    continue
                except Refused as exc:
                    call.error = str(exc)
                    break
        seq += 1


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def check_store(data_dir: Path, calls: list[Call], killed_at_wall: float | None = None) -> dict:
    """Lost / duplicated / journal = database, read from the stopped server's DATA_DIR (the store is
    opened without the start-up reconciliation, so what it would repair is seen first)."""
    import sqlalchemy as sa

    from db import open_store, scan_journal
    from db.models import Annotation, Annotator, Mention

    store = open_store(data_dir, reconcile=False)
    try:
        q = (
            sa.select(
                Annotation.id,
                Annotation.request_id,
                Annotator.name,
                Mention.uid,
                Annotation.decision,
                Annotation.entity_id,
                Annotation.status,
                Annotation.mention_id,
                Annotation.created_at,
            )
            .join(Annotator, Annotator.id == Annotation.annotator_id)
            .join(Mention, Mention.id == Annotation.mention_id)
        )
        with store.engine.connect() as c:
            rows = c.execute(q).all()
        db_rids = Counter(r.request_id for r in rows)
        by_rid = {r.request_id: r for r in rows}
        scan = scan_journal(store.settings.journal_path)
        journal_rids = Counter(e["request_id"] for e in scan.events() if e.get("type") == "annotation")
        sent = {c.request_id: c for c in calls}

        by_id = {r.id: r for r in rows}
        acked = [c for c in calls if c.annotation_id is not None]
        lost, unwritten = [], 0
        for c in acked:
            # the acknowledged annotation must be in the database with the call's values; a call that
            # repeated the annotator's current decision on that mention is answered with that
            # annotation and writes nothing (db/annotations.py), so its request id is not stored
            r = by_id.get(c.annotation_id)
            mine = by_rid.get(c.request_id)
            if r is None or (r.name, r.uid, r.decision, r.entity_id) != (
                c.user,
                c.mention,
                c.decision,
                c.entity or None,
            ):
                lost.append(c.request_id)
            elif mine is not None and mine.id != c.annotation_id:
                lost.append(c.request_id)  # stored, but the client was given another annotation
            elif mine is None:
                unwritten += 1
        ours = [r for r in rows if r.request_id.startswith(RID_PREFIX + "-")]
        duplicated = (
            sum(n - 1 for n in db_rids.values())
            + sum(n - 1 for n in journal_rids.values())
            + sum(1 for r in ours if r.request_id not in sent)
        )
        journal_equals_db = set(journal_rids) == set(db_rids)
        rep = store.reconcile()  # the store's own check: with journal = database it changes nothing
        reconcile_clean = rep.events_reapplied == 0 and rep.events_rejournaled == 0
        current = Counter((r.mention_id, r.name) for r in rows if r.status == "current")
        committed_before_kill = None
        if killed_at_wall is not None:
            kill_dt = datetime.fromtimestamp(killed_at_wall, UTC)
            committed_before_kill = sum(
                1
                for c in calls
                if c.cut and c.request_id in by_rid and _aware(by_rid[c.request_id].created_at) <= kill_dt
            )
        return {
            "stored": len(ours),
            "acknowledged_without_write": unwritten,  # repeated the current decision: answered with it
            "lost": len(lost),
            "lost_request_ids": lost[:20],
            "duplicated": duplicated,
            "journal_matches_db": journal_equals_db and reconcile_clean,
            "journal_annotations": sum(journal_rids.values()),
            "db_annotations": len(rows),
            "reconcile_after": {
                "events_reapplied": rep.events_reapplied,
                "events_rejournaled": rep.events_rejournaled,
                "incomplete_groups": rep.incomplete_groups,
                "bad_lines": len(rep.bad_lines),
            },
            "integrity": store.integrity_check(),
            "two_current_for_one_mention_and_annotator": sum(1 for n in current.values() if n > 1),
            "cut_calls_committed_before_kill": committed_before_kill,
        }
    finally:
        store.close()


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def run_load_kill(cfg: LoadKillConfig | None = None, log=print) -> dict:
    """The experiment (module docstring); returns the JSON record."""
    cfg = cfg or LoadKillConfig()
    tmp = None
    if cfg.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="mimic-loadkill-")
        cfg.data_dir = Path(tmp) / "data"
    data_dir = Path(cfg.data_dir)
    work = data_dir.parent
    port = cfg.port or free_port()
    users, users_env = _users(cfg.users)
    names = list(users)
    mentions = _mentions()
    record: dict = {"clients": cfg.clients, "users": cfg.users, "seconds": cfg.seconds, "loadavg_start": _loadavg()}

    first = AppServer(data_dir, port, users_env, work / "server-1.log", cfg.env)
    first.start()
    servers = [first]
    calls: list[Call] = []
    killed_at_wall: float | None = None
    t_kill = 0.0
    login_refusals: list[str] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        record["first_start_s"] = round(first.wait_serving(cfg.serving_timeout), 2)
        log(f"[load/kill] first start (fresh DATA_DIR) served after {record['first_start_s']} s; {cfg.clients} clients")
        for ci in range(cfg.clients):
            user = names[ci % len(names)]
            t = threading.Thread(
                target=_client_loop,
                args=(ci, user, users[user], first.url, mentions, calls, stop, cfg, login_refusals),
                name=f"loadkill-client-{ci}",
                daemon=True,
            )
            t.start()
            threads.append(t)
        t_run = time.perf_counter()
        time.sleep(cfg.seconds / 2)

        in_flight = sum(1 for c in list(calls) if c.annotation_id is None and c.error is None)
        acked_before = sum(1 for c in list(calls) if c.annotation_id is not None)
        killed_at_wall = time.time()
        t_kill = time.perf_counter()
        first.kill()
        second = AppServer(data_dir, port, users_env, work / "server-2.log", cfg.env)
        second.start()
        servers.append(second)
        record["killed_after_s"] = round(t_kill - t_run, 2)
        record["acknowledged_before_kill"] = acked_before
        record["in_flight_at_kill"] = in_flight
        log(f"[load/kill] SIGKILL after {record['killed_after_s']} s ({acked_before} acknowledged); restarting")
        second.wait_serving(cfg.serving_timeout)
        t_serving = time.perf_counter()
        cpu = second.cpu_seconds()
        record["restart_cpu_s"] = round(cpu, 2) if cpu is not None else None
        record["restart_to_serving_s"] = round(t_serving - t_kill, 2)
        m = re.search(r"started in ([\d.]+) s", second.log_text())
        record["restart_app_start_s"] = float(m.group(1)) if m else None
        log(f"[load/kill] restarted server serves {record['restart_to_serving_s']} s after the SIGKILL")
        time.sleep(cfg.seconds / 2)
        stop.set()
        for t in threads:
            t.join(cfg.retry_for + 120)
        record["clients_still_running"] = sum(t.is_alive() for t in threads)
        record["annotating_s"] = round(time.perf_counter() - t_run - (t_serving - t_kill), 2)
        acks_after = [c.acked_at for c in calls if c.acked_at is not None and c.acked_at > t_kill]  # new server
        record["restart_to_first_ack_s"] = round(min(acks_after) - t_kill, 2) if acks_after else None
        m = re.search(r"journal reconciliation: .*", second.log_text())
        record["restart_reconciliation"] = m.group(0) if m else "nothing to repair"
    finally:
        stop.set()
        for s in servers:
            s.stop()
    calls = list(calls)
    acked = [c for c in calls if c.annotation_id is not None]
    lat = [c.latency_s for c in calls if c.latency_s is not None]
    record.update(
        {
            "calls": len(calls),
            "acknowledged": len(acked),
            "unacknowledged": sum(1 for c in calls if c.annotation_id is None and c.error is None),
            "refused": sum(1 for c in calls if c.error is not None),
            "refused_examples": [c.error for c in calls if c.error][:3],
            "first_sign_in_refusals": dict(Counter(login_refusals)),
            "cut_calls": sum(1 for c in calls if c.cut),
            "cut_reasons": dict(Counter(c.cut for c in calls if c.cut)),
            "cut_sent_after_kill_s": sorted(round(c.sent_at - t_kill, 2) for c in calls if c.cut) if t_kill else [],
            "retry_attempts": sum(c.attempts - 1 for c in calls),
            "acknowledged_per_s": round(len(acked) / record["annotating_s"], 1) if record.get("annotating_s") else None,
            "annotate_latency_ms": {
                "p50": round(1000 * statistics.median(lat), 1) if lat else None,
                "p95": round(1000 * _pct(lat, 0.95), 1) if lat else None,
                "max": round(1000 * max(lat), 1) if lat else None,
                "n": len(lat),
            },
        }
    )
    record.update(check_store(data_dir, calls, killed_at_wall=killed_at_wall))
    record["loadavg_end"] = _loadavg()
    record["cpus"] = os.cpu_count()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0, help="annotating time (half before, half after the kill)")
    ap.add_argument("--data-dir", help="keep the run's DATA_DIR and server logs here (must not exist)")
    ap.add_argument("--json", help="also write the record to this file")
    a = ap.parse_args()
    cfg = LoadKillConfig(clients=a.clients, users=a.users, seconds=a.seconds)
    if a.data_dir:
        if Path(a.data_dir).exists():
            ap.error(f"--data-dir {a.data_dir} exists")
        cfg.data_dir = Path(a.data_dir) / "data"
    record = {"command": " ".join(["python", *sys.argv])}
    record.update(run_load_kill(cfg, log=lambda s: print(s, file=sys.stderr, flush=True)))
    text = json.dumps(record, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
