"""Step 1: encode the KB names and the mentions with the frozen offline text backbone.

all-MiniLM-L6-v2 (the project's offline text encoder), mean-pooled over tokens and unit-normalised, for
  * every KB entity name (max 24 tokens)                       -> E_name.npy
  * every mention alone (max 24 tokens)                        -> M_{split}_mention.npy
  * every mention paired with its sentence, "mention [SEP] sentence", only the sentence truncated
    (max 64 tokens)                                            -> M_{split}_ctx.npy
The encoder is not fine-tuned; these vectors feed the dense retriever (step 2), two features (step 3)
and the learned text head (step 5). This is the slow step (~27 min on the 2-core CPU).

  python benchmarks/melbench_fusion/01_encode.py [--data FILE] [--cache DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
import torch.nn.functional as F
from common import SPLITS, load, parser, record, setup


@torch.no_grad()
def encode(tok, model, texts: list[str], max_len: int, pair: list[str] | None = None, bs: int = 256) -> np.ndarray:
    """Mean-pooled, unit-norm vectors [N, 384]; texts are batched by length to limit padding."""
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), 384), np.float32)
    for s in range(0, len(texts), bs):
        idx = order[s : s + bs]
        first = [texts[i] for i in idx]
        if pair is None:
            e = tok(first, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        else:
            second = [pair[i] for i in idx]
            e = tok(first, second, padding=True, truncation="only_second", max_length=max_len, return_tensors="pt")
        h = model(**e).last_hidden_state
        m = e["attention_mask"].unsqueeze(-1).float()
        out[idx] = F.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    return out


def main():
    a = parser(__doc__).parse_args()
    setup(a)
    from transformers import AutoModel, AutoTokenizer

    from mimic.backbones.offline import default_text_path

    t0 = time.time()
    _, names, ms, _ = load(a.data)
    tok = AutoTokenizer.from_pretrained(default_text_path(), local_files_only=True)
    model = AutoModel.from_pretrained(default_text_path(), local_files_only=True).eval()
    np.save(a.cache / "E_name.npy", encode(tok, model, names, 24))
    wall = {"names": round(time.time() - t0, 1)}
    for s in SPLITS:
        mentions = [m.mention for m in ms[s]]
        np.save(a.cache / f"M_{s}_mention.npy", encode(tok, model, mentions, 24))
        np.save(a.cache / f"M_{s}_ctx.npy", encode(tok, model, mentions, 64, pair=[m.sentence for m in ms[s]]))
        wall[s] = round(time.time() - t0, 1)
    record(a.cache, {"step": "01_encode", "wall_s_cumulative": wall})


if __name__ == "__main__":
    main()
