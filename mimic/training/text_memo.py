"""The frozen backbone's text outputs, computed once per distinct token row and shared by every step.

Why: with the backbone frozen, the MELBench recipe encoded the same texts three times: the heads'
feature cache (17,391 KB entities, 18,091 train mentions), then the KB index build (the entities
again) and the lexical unit's shortlists (the mentions again); the retraining job and the learning
curve did the same per run. Encoding was most of the recipe's 95 minutes on this 2-core CPU.

While installed (`memo.installed(BackboneClass)`), `encode_text` returns stored rows for token-id
rows it has seen and encodes only the new ones. Two savings:

* reuse: a row is keyed by the backbone's weights (a hash of every parameter, recomputed when one
  changes in place) and its token ids, so two instances of the same frozen tower (the trainer's
  model, the checkpoint reloaded for the index) share rows;
* no padding work: new rows are encoded sorted by length, each batch cut to its longest row instead
  of `text_max_length` (KB names are ~6 of 40 tokens). The valid positions' outputs equal the padded
  encoding's up to float rounding (~3e-6), and the padded positions come back as zeros: MIMIC's heads
  ignore masked positions (their scores are bit-identical with zeroed padding; tests/test_text_memo.py).

Stepped aside while gradients flow into the backbone (training it); under `no_grad` a backbone
whose weights changed gets a new fingerprint, so stale rows are never returned.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from mimic.backbones.base import TextFeatures


class TextFeatureMemo:
    """Stored text outputs: key (weights fingerprint, ids row, mask row) -> (global [D] fp32,
    tokens [n, D] fp32 up to the row's last valid position n)."""

    def __init__(self, batch_size: int = 64):
        self.rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0
        self.encode_seconds = 0.0

    def stats(self) -> dict:
        return {
            "rows": len(self.rows),
            "hits": self.hits,
            "misses": self.misses,
            "encode_seconds": round(self.encode_seconds, 1),
        }

    # -- keys ------------------------------------------------------------------------------
    @staticmethod
    def fingerprint(backbone) -> str:
        """Hash of the backbone's description and every parameter; cached on the instance until a
        parameter changes in place (its `_version` moves)."""
        params = list(backbone.parameters())
        version = tuple(p._version for p in params)
        cached = getattr(backbone, "_text_memo_fp", None)
        if cached is not None and cached[0] == version:
            return cached[1]
        h = hashlib.sha256(json.dumps(backbone.describe(), sort_keys=True, default=str).encode())
        with torch.no_grad():
            for p in params:
                d = p.detach().double()
                h.update(f"{tuple(p.shape)}:{d.sum().item().hex()}:{d.abs().sum().item().hex()}".encode())
        fp = h.hexdigest()
        backbone._text_memo_fp = (version, fp)
        return fp

    # -- encoding --------------------------------------------------------------------------
    def encode(self, original, backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """`original(backbone, ids, mask)` for the rows not stored yet; every row from the store."""
        fp = self.fingerprint(backbone)
        ids, mask = input_ids.cpu(), attention_mask.cpu()
        ids_np, mask_np = ids.numpy(), mask.numpy()
        keys = [(fp, ids_np[i].tobytes(), mask_np[i].tobytes()) for i in range(len(ids_np))]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.rows}.values(), key=lambda i: _length(mask[i]))
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if todo:
            t0 = time.perf_counter()
            dev = input_ids.device
            for s in range(0, len(todo), self.batch_size):
                part = todo[s : s + self.batch_size]
                n = max(1, max(_length(mask[i]) for i in part))
                sel = torch.tensor(part)
                with torch.no_grad():
                    out = original(backbone, ids[sel, :n].to(dev), mask[sel, :n].to(dev))
                g, t = out.global_.float().cpu(), out.tokens.float().cpu()
                for j, i in enumerate(part):
                    self.rows[keys[i]] = (g[j].clone(), t[j, : _length(mask[i])].clone())
            self.encode_seconds += time.perf_counter() - t0
        B, L = ids.shape
        first = self.rows[keys[0]]
        glob = torch.stack([self.rows[k][0] for k in keys])
        tokens = torch.zeros(B, L, first[1].shape[-1])
        for b, k in enumerate(keys):
            t = self.rows[k][1]
            tokens[b, : t.shape[0]] = t
        dev = input_ids.device
        return TextFeatures(glob.to(dev), tokens.to(dev), attention_mask.bool())

    @contextmanager
    def installed(self, backbone_cls):
        """Route `backbone_cls.encode_text` through the memo (restored on exit). Installed on the
        class, so backbones loaded later (a checkpoint reloaded for the index) use it too."""
        original = backbone_cls.encode_text
        memo = self

        def encode_text(bb, input_ids, attention_mask):
            if torch.is_grad_enabled() and any(p.requires_grad for p in bb.parameters()):
                return original(bb, input_ids, attention_mask)  # training the backbone: no reuse
            return memo.encode(original, bb, input_ids, attention_mask)

        encode_text._text_memo = memo  # type: ignore[attr-defined]  # found by `shared_memo`
        backbone_cls.encode_text = encode_text
        try:
            yield self
        finally:
            backbone_cls.encode_text = original

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """All rows in one file, for a later run on the same data (the learning curve's --feature-cache)."""
        keys = list(self.rows)
        torch.save({"keys": keys, "rows": [self.rows[k] for k in keys]}, path)

    def load(self, path: str | Path) -> int:
        """Rows of `save`; a file in another layout is ignored (0 rows), never misread."""
        d = torch.load(path, weights_only=False)
        if not isinstance(d, dict) or "rows" not in d:
            return 0
        for k, r in zip(d["keys"], d["rows"]):
            self.rows[k] = r
        return len(d["keys"])


def installed_memo(backbone_cls) -> TextFeatureMemo | None:
    """The memo routing `backbone_cls.encode_text`, if one is installed."""
    return getattr(backbone_cls.encode_text, "_text_memo", None)


@contextmanager
def shared_memo(backbone):
    """The memo installed on `type(backbone)`, or a new one installed for the duration: nested
    steps (trainer -> lexical unit fit -> served evaluation; a benchmark -> the retraining job)
    share the outermost memo instead of stacking copies."""
    cls = type(backbone)
    memo = installed_memo(cls)
    if memo is not None:
        yield memo
        return
    with TextFeatureMemo().installed(cls) as memo:
        yield memo


def _length(mask_row: torch.Tensor) -> int:
    """Position after the row's last valid token (right padding: its token count)."""
    nz = torch.nonzero(mask_row, as_tuple=False)
    return int(nz[-1, 0]) + 1 if len(nz) else 0
