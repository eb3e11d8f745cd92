"""A background start (app/context.py, app/launch.py): the store opens and the UI can be built before
the model has loaded; whatever needs the model waits for it, and gets a clear message (never a
crash) when it waits too long or the load failed; the header says the model is loading. The first
Inspect's costs are paid ahead (app/figures.py). Fast: the linking service is a stand-in."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from _fake_service import FakeService  # tests/ is on sys.path (pytest rootdir conftest)

import app.context as context
from app.common import UserError, header_markdown
from app.config import AppConfig
from app.context import AppContext, ModelLoadFailed, ModelLoading
from app.tabs import link as link_tab


class _SlowLoad:
    """Replaces LinkingService.start: blocks until released, then returns a FakeService (or raises)."""

    def __init__(self, fail: Exception | None = None):
        self.started, self.release, self.fail = threading.Event(), threading.Event(), fail

    def __call__(self, *a, **kw):
        self.started.set()
        assert self.release.wait(60)
        if self.fail is not None:
            raise self.fail
        return FakeService()


def _cfg(tmp_path):
    return AppConfig.from_env({"DATA_DIR": str(tmp_path / "data"), "MIMIC_EXAMPLES": "", "MIMIC_WATCH_SECONDS": "0"})


def test_requests_before_the_model_is_ready_wait_for_it(tmp_path, monkeypatch):
    load = _SlowLoad()
    monkeypatch.setattr(context.LinkingService, "start", load)
    ready: list = []
    t0 = time.perf_counter()
    ctx = AppContext.start(_cfg(tmp_path), progress=False, background=True, on_ready=ready.append)
    assert time.perf_counter() - t0 < 30 and not ctx.ready and not load.started.is_set()  # nothing loads yet
    assert "the model is loading" in header_markdown(ctx)
    assert ctx.begin_loading() is ctx.begin_loading()  # starts once
    assert load.started.wait(30)
    with pytest.raises(ModelLoading, match="still loading"):
        ctx.wait_ready(timeout=0.05)
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.setdefault("service", ctx.service))  # a request arriving early
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # it waits, it does not fail
    load.release.set()
    waiter.join(30)
    assert isinstance(got["service"], FakeService) and ctx.ready and ready == [ctx]
    assert ctx.store.count_entities() == 48  # the demo KB went in, in the background
    assert ctx.store.promoted_model_version().name == "fake-v1"  # type: ignore[union-attr]
    assert "model **fake-v1**" in header_markdown(ctx)
    assert set(ctx.startup_seconds) == {"store", "kb", "model+index", "total"}


def test_a_link_that_waits_too_long_gets_a_message_not_an_error(tmp_path, monkeypatch):
    load = _SlowLoad()
    monkeypatch.setattr(context.LinkingService, "start", load)
    ctx = AppContext.start(_cfg(tmp_path), progress=False, background=True)
    ctx.wait_seconds = 0.05
    try:
        with pytest.raises(UserError, match="the model is still loading"):  # what the Link tab shows
            link_tab.link(ctx, None, "Chelsea won 2-1", "Chelsea")
    finally:
        load.release.set()
    ctx.wait_seconds = 30
    assert ctx.wait_ready() is ctx.service


def test_a_failed_background_load_is_reported_to_callers_and_to_on_failure(tmp_path, monkeypatch):
    load = _SlowLoad(fail=RuntimeError("checkpoint unreadable"))
    monkeypatch.setattr(context.LinkingService, "start", load)
    failures: list = []
    ctx = AppContext.start(_cfg(tmp_path), progress=False, background=True, on_failure=failures.append)
    ctx.begin_loading()
    load.release.set()
    with pytest.raises(ModelLoadFailed, match="checkpoint unreadable"):
        ctx.wait_ready(timeout=30)
    assert [str(e) for e in failures] == ["checkpoint unreadable"] and not ctx.ready


def test_the_apps_keep_model_setting_reaches_the_service(tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr(context.LinkingService, "start", lambda *a, **kw: seen.append(kw) or FakeService())
    AppContext.start(replace(_cfg(tmp_path), keep_model=224), progress=False)
    assert seen[0]["keep_model"] == 224


def test_a_foreground_start_is_ready_when_it_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(context.LinkingService, "start", lambda *a, **kw: FakeService())
    ready: list = []
    ctx = AppContext.start(_cfg(tmp_path), progress=False, on_ready=ready.append)
    assert ctx.ready and ready == [ctx] and ctx.begin_loading() is None


def test_the_page_head_loads_gradios_plotly_chunk_when_idle(tmp_path):
    from app import figures

    head = figures.plotly_preload_head()
    assert head.startswith('<script type="module">') and 'import("./assets/PlotlyPlot-' in head
    # then one bar chart and one heatmap drawn off-screen and removed (plotly's first draws, paid early)
    assert ".then(draw)" in head and 'type: "bar"' in head and 'type: "heatmap"' in head
    assert "left:-10000px" in head and "P.purge(d); d.remove()" in head
    (tmp_path / "PlotlyPlot-a.js").write_text("", encoding="utf-8")
    (tmp_path / "PlotlyPlot-b.js").write_text("", encoding="utf-8")
    assert figures.plotly_preload_head(tmp_path) == ""  # not exactly one chunk: no guess
    assert figures.plotly_preload_head(tmp_path / "missing") == ""


def test_prewarm_builds_every_kind_of_inspect_figure():
    from app import figures

    assert figures.prewarm() == ["unit_bars", "unit_bars (zero-shot)", "token_heatmap", "token_highlights"]


def test_a_first_start_loads_the_model_before_serving_its_seeded_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(context.LinkingService, "start", lambda *a, **kw: FakeService())
    seeded: list = []
    monkeypatch.setattr(AppContext, "seed_queue", lambda self, ms: seeded.append(len(ms)) or len(ms))
    cfg = AppConfig.from_env({"DATA_DIR": str(tmp_path / "data"), "MIMIC_WATCH_SECONDS": "0"})  # demo examples
    ctx = AppContext.start(cfg, progress=False, background=True)
    assert ctx.ready and seeded == [len(ctx.examples)] and seeded[0] > 0  # no empty queue is served
