"""The frozen backbone's text outputs, computed once per distinct token row (a measurement device of
`bench_learning_curve.py`: the retraining job itself encodes the KB in each run)."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path


class TextFeatureMemo:
    """While installed on a backbone class, `encode_text` returns stored rows for token-id rows it
    has seen (keyed by the backbone's weights, so two instances of the same frozen tower share
    them) and encodes only the new rows. Used only when no backbone parameter needs a gradient."""

    def __init__(self):
        self.rows: dict[tuple, tuple] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _fingerprint(backbone) -> str:
        fp = getattr(backbone, "_curve_memo_fp", None)
        if fp is None:
            import torch

            h = hashlib.sha256(json.dumps(backbone.describe(), sort_keys=True, default=str).encode())
            with torch.no_grad():
                for i, p in enumerate(backbone.parameters()):
                    if i >= 8:
                        break
                    h.update(p.detach().double().sum().item().hex().encode())
            fp = h.hexdigest()
            backbone._curve_memo_fp = fp
        return fp

    def save(self, path: str | Path) -> None:
        """All rows in one file (fp32, as computed), for a later run on the same data."""
        import torch

        keys = list(self.rows)
        torch.save(
            {
                "keys": keys,
                "global": torch.stack([self.rows[k][0] for k in keys]) if keys else None,
                "tokens": torch.stack([self.rows[k][1] for k in keys]) if keys else None,
                "mask": torch.stack([self.rows[k][2] for k in keys]) if keys else None,
            },
            path,
        )

    def load(self, path: str | Path) -> int:
        import torch

        d = torch.load(path, weights_only=False)
        for i, k in enumerate(d["keys"]):
            self.rows[k] = (d["global"][i], d["tokens"][i], d["mask"][i])
        return len(d["keys"])

    @contextmanager
    def installed(self, backbone_cls):
        import torch

        from mimic.backbones.base import TextFeatures

        original = backbone_cls.encode_text
        memo = self

        def encode_text(bb, input_ids, attention_mask):
            if torch.is_grad_enabled() and any(p.requires_grad for p in bb.parameters()):
                return original(bb, input_ids, attention_mask)
            fp = memo._fingerprint(bb)
            ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy()
            keys = [(fp, ids[i].tobytes(), mask[i].tobytes()) for i in range(len(ids))]
            todo = [i for i, k in enumerate(keys) if k not in memo.rows]
            memo.misses += len(todo)
            memo.hits += len(keys) - len(todo)
            if todo:
                sel = torch.tensor(todo, device=input_ids.device)
                with torch.no_grad():
                    out = original(bb, input_ids.index_select(0, sel), attention_mask.index_select(0, sel))
                for j, i in enumerate(todo):
                    memo.rows[keys[i]] = (out.global_[j].clone(), out.tokens[j].clone(), out.mask[j].clone())
            rows = [memo.rows[k] for k in keys]
            dev = input_ids.device
            return TextFeatures(*(torch.stack([r[c] for r in rows]).to(dev) for c in range(3)))

        backbone_cls.encode_text = encode_text
        try:
            yield self
        finally:
            backbone_cls.encode_text = original
