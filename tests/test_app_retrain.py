"""The app and the retraining loop: a run started from the Models tab's handler trains in its own
process, the app serves the promoted version (hot swap, serving never interrupted), and rolling back
is one action. Tiny random CLIP, synthetic corrections, CPU."""

from __future__ import annotations

import json
import threading
import time

import pytest

from app.common import UserError
from app.config import AppConfig
from app.context import AppContext
from app.tabs import annotate as annotate_tab
from app.tabs import link as link_tab
from app.tabs import models as models_tab


@pytest.fixture()
def retrain_app(tmp_path, tiny_clip_dir, synthetic_dataset):
    from mimic.data.jsonl import write_jsonl_dataset

    data = write_jsonl_dataset(synthetic_dataset, tmp_path / "synthetic")
    split = sorted(synthetic_dataset.splits)[0]
    cfg = AppConfig.from_env(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "MIMIC_BACKBONE": str(tiny_clip_dir),
            "MIMIC_KB": str(data / "kb.jsonl"),
            "MIMIC_EXAMPLES": str(data / f"{split}.jsonl"),
            "MIMIC_USERS": "rev:pw:admin,ana:pw",
            "MIMIC_WATCH_SECONDS": "0",
        }
    )
    ctx = AppContext.start(cfg, progress=False)
    yield ctx, synthetic_dataset
    ctx.stop()
    ctx.store.close()


def _wait_for_run(ctx, run_id, timeout=300):
    t0, offset, log = time.time(), 0, ""
    while time.time() - t0 < timeout:
        prog, text, offset = models_tab.retrain_status(ctx, run_id, offset)
        log += text
        if prog.get("status") in ("succeeded", "failed", "cancelled") or prog.get("alive") is False:
            return prog, log
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s; log:\n{log[-3000:]}")


@pytest.mark.slow
def test_retrain_from_the_app_then_hot_swap_and_rollback(retrain_app):
    ctx, ds = retrain_app
    zero = ctx.service.served.version
    assert zero.startswith("zero-shot (") and ctx.service.served.scoring == "zero-shot"
    assert ctx.store.promoted_model_version().name == zero  # what serves is a registered version
    # corrections: the reviewer confirms the gold of every example mention
    examples = {m.id: m for m in ctx.examples}
    for mid, m in examples.items():
        annotate_tab.annotate_api(ctx, "rev", ctx.store.get_mention(f"example:{mid}").id, "entity", m.answer)
    with pytest.raises(UserError, match="needs the role"):
        models_tab.start_retrain(ctx, "ana")  # annotators cannot start a job
    with pytest.raises(UserError, match="sign in"):
        models_tab.start_retrain(ctx, None)
    # promotion forced by the thresholds: the rule itself is tested in tests/test_retrain.py
    run_id = models_tab.start_retrain(ctx, "rev", epochs=2, batch_size=16, min_mrr_delta=-1.0, max_dev_h1_drop=1.0)
    with pytest.raises(UserError, match="another retraining run"):
        models_tab.start_retrain(ctx, "rev")  # one job at a time
    prog, log = _wait_for_run(ctx, run_id)
    assert prog["status"] == "succeeded", log[-3000:]
    run = ctx.store.get_training_run(run_id)
    new = run.output_model_version
    assert new and ctx.store.promoted_model_version().name == new
    assert models_tab.training_runs(ctx)["run"].iloc[0] == run_id
    # hot swap: links keep being answered while the new model and its index load
    seen, errors = [], []
    stop = threading.Event()

    def keep_linking():
        m = next(iter(examples.values()))
        while not stop.is_set():
            try:
                seen.append(link_tab.link(ctx, m.image, m.sentence, m.mention).scoring)
            except Exception as exc:
                errors.append(exc)

    t = threading.Thread(target=keep_linking)
    t.start()
    swapped = []
    swapper = threading.Thread(target=lambda: swapped.append(ctx.follow_promotion()))
    swapper.start()
    swapper.join(120)  # a stream of readers must not starve the swap (writer priority)
    assert not swapper.is_alive() and swapped == [new]
    time.sleep(0.3)
    stop.set()
    t.join()
    assert not errors and seen and seen[-1] == "model"
    assert seen == sorted(seen, key=lambda s: s == "model")  # old model until the switch, then new
    assert ctx.service.served.version == new and ctx.service.served.scoring == "model"
    first = ds.splits[sorted(ds.splits)[0]][0]
    r = link_tab.link(ctx, None, first.sentence, first.mention)
    assert r.scoring == "model" and r.top.explanation.kind == "attention"
    mv = models_tab.model_versions(ctx)
    assert new in mv.query("status == 'serving'")["version"].tolist()
    row = mv[mv["version"] == new].iloc[0]
    assert " → " in row["held-out MRR (serving → this)"] and "corrections" in row["trained"]
    assert row["decision"].startswith("promoted") and json.loads(row["metrics"])["version"] == new
    # rollback is one action (admins only)
    with pytest.raises(UserError, match="needs the role"):
        models_tab.serve_version(ctx, "ana", zero)
    assert models_tab.serve_version(ctx, "rev", zero) == zero
    assert ctx.service.served.scoring == "zero-shot" and ctx.store.promoted_model_version().name == zero
    assert ctx.follow_promotion() is None  # nothing to do: already serving it


def test_restart_serves_the_promoted_version(retrain_app, tmp_path, tiny_clip):
    import torch

    from mimic.models.checkpoint import save_checkpoint
    from mimic.models.linking_model import LinkingModel

    ctx, _ = retrain_app
    torch.manual_seed(1)
    ck = save_checkpoint(
        LinkingModel.build(tiny_clip, mode="fixed"), ctx.config.data_dir / "models" / "v-test", backbone_trained=False
    )
    ctx.store.register_model_version("v-test", checkpoint=str(ck), backbone="tiny CLIP")
    ctx.store.promote("v-test")
    again = AppContext.start(ctx.config, progress=False)  # a restart on the same DATA_DIR
    try:
        assert again.service.served.version == "v-test" and again.service.served.scoring == "model"
    finally:
        again.store.close()
