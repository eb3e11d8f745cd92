"""Step 5 (optional): a MIMIC-G2G-like learned text unit on the frozen MiniLM vectors, used as one extra
re-ranker feature (04_fuse.py --extra headcf).

score = cos(q + A[ctx; mention], e + B e), with q the "mention [SEP] sentence" vector, e the name vector
and A, B linear maps initialised to zero (so training starts from the zero-shot cosine). Trained with a
softmax over the gold, the 31 top shortlisted candidates (hard negatives) and the other golds of the batch
(in-batch negatives); AdamW lr 1e-3, batch 256.

Default (cross-fitted, the variant that was tested): the train split's scores come from 2-fold
cross-fitting by sentence id parity — each half scored by a head trained 3 epochs on the other half — so
the re-ranker sees train scores that behave like dev/test scores; dev and test are scored by a head trained
on all of train. Writes headcf_{split}.npz, X [M, 64, 1].
--in-sample reproduces the flawed first variant: one head trained 6 epochs on all of train scores train
itself, so its train scores are over-confident (the re-ranker then picked epoch 0). Writes head_{split}.npz.

Caveat: the head's gain is on entities seen in training (it memorises train names; see README.md).

  python benchmarks/melbench_fusion/05_dense_head.py [--in-sample]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
import torch.nn.functional as F
from common import load, parser, record, sentence_id, setup

HARD = 31  # shortlisted hard negatives per mention


class Head(torch.nn.Module):
    """Residual linear maps on the frozen mention (ctx ++ mention, 768-d) and name (384-d) vectors."""

    def __init__(self, d: int = 384):
        super().__init__()
        self.d = d
        self.A = torch.nn.Linear(2 * d, d)
        self.B = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(self.A.weight)
        torch.nn.init.zeros_(self.B.weight)
        self.logit = torch.nn.Parameter(torch.tensor(3.0))  # log inverse temperature

    def mention(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x[:, : self.d] + self.A(x), dim=-1)

    def entity(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(e + self.B(e), dim=-1)


def main():
    ap = parser(__doc__)
    ap.add_argument("--in-sample", action="store_true", help="the flawed variant (train scored by its own head)")
    a = ap.parse_args()
    setup(a)
    torch.manual_seed(0)
    t0 = time.time()
    En = torch.from_numpy(np.load(a.cache / "E_name.npy"))
    _, _, ms, gold = load(a.data)

    def split_arrays(s):
        """Mention vectors [M, 768], shortlists [M, 64], gold positions [M]."""
        Q = np.concatenate([np.load(a.cache / f"M_{s}_ctx.npy"), np.load(a.cache / f"M_{s}_mention.npy")], 1)
        C = np.load(a.cache / f"short_{s}.npz")["cands"]
        return torch.from_numpy(Q), torch.from_numpy(C), torch.from_numpy(gold[s])

    data = {s: split_arrays(s) for s in ("train", "dev", "test")}

    def shortlist_scores(head, s):
        Q, C, _ = data[s]
        with torch.no_grad():
            return torch.einsum("md,mkd->mk", head.mention(Q), head.entity(En[C]))

    epochs = 6 if a.in_sample else 3
    log = []

    def train(rows):
        head = Head()
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
        Qtr, Ctr, gtr = (t[rows] for t in data["train"])
        for ep in range(epochs):
            perm = torch.randperm(len(Qtr))
            for b in range(0, len(perm), 256):
                i = perm[b : b + 256]
                g = gtr[i]
                qv = head.mention(Qtr[i])
                cand = torch.cat([g[:, None], Ctr[i][:, :HARD]], 1)  # column 0 is the gold
                hard = torch.einsum("bd,bkd->bk", qv, head.entity(En[cand]))
                hard = hard.masked_fill((cand == g[:, None]) & (torch.arange(HARD + 1) > 0), -1e4)
                # in-batch negatives: the other golds of the batch; the own gold (diagonal) and duplicates of it
                # are masked, since the gold already is column 0
                inb = (qv @ head.entity(En[g]).T).masked_fill(g[:, None] == g[None], -1e4)
                logits = torch.cat([hard, inb], 1) * head.logit.exp()
                loss = F.cross_entropy(logits, torch.zeros(len(i), dtype=torch.long))
                opt.zero_grad()
                loss.backward()
                opt.step()
            sc = shortlist_scores(head, "dev")
            _, C, g = data["dev"]
            hit = (C.gather(1, sc.argmax(1, keepdim=True)).squeeze(1) == g).float().mean().item()
            log.append({"epoch": ep, "loss": round(loss.item(), 3), "dev_shortlist_H@1": round(hit, 4)})
            print(json.dumps(log[-1] | {"wall_s": round(time.time() - t0, 1)}), flush=True)
        return head

    prefix = "head" if a.in_sample else "headcf"
    n_train = len(data["train"][0])
    if a.in_sample:
        head = train(torch.arange(n_train))
        scored = ("train", "dev", "test")
    else:
        half = np.array([int(sentence_id(m)) % 2 for m in ms["train"]])
        Xtr = np.zeros(data["train"][1].shape, np.float32)
        for fold in (0, 1):
            head = train(torch.from_numpy(np.where(half != fold)[0]))
            Xtr[half == fold] = shortlist_scores(head, "train").numpy()[half == fold]
        np.savez(a.cache / "headcf_train.npz", X=Xtr[:, :, None])
        head = train(torch.arange(n_train))
        scored = ("dev", "test")
    for s in scored:
        np.savez(a.cache / f"{prefix}_{s}.npz", X=shortlist_scores(head, s).numpy()[:, :, None].astype(np.float32))
    record(a.cache, {"step": "05_dense_head", "variant": prefix, "epochs": log, "wall_s": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
