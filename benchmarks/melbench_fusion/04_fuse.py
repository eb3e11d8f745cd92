"""Step 4: train a learned re-ranker over the 64-candidate serving shortlist.

Each candidate is scored from its features (linear or a 64-64 MLP, features standardised with the train
mean/std); a softmax over the mention's 64 candidates is trained with cross-entropy on the gold, i.e. the
gold against the shortlist's 63 hard negatives (listwise). Mentions whose shortlist misses the gold
(0.2 %) are left out of training: placing them is not the re-ranker's job. AdamW with a cosine schedule;
after every epoch the model is evaluated on dev and the epoch with the best dev H@1 + MRR is kept.
Only dev is evaluated here: test is read once, for the chosen models, by 06_eval.py.

Writes fuse_{tag}.pt (weights, standardisation, features, model type) and appends the dev result.

  python benchmarks/melbench_fusion/04_fuse.py --model mlp --tag mlp_all
  python benchmarks/melbench_fusion/04_fuse.py --model linear --drop lex_rr,den_rr --tag linear_no_rank
  python benchmarks/melbench_fusion/04_fuse.py --model mlp --extra headcf --epochs 12 --tag mlp_all_headcf
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from common import FEATS, build_net, fmt, load_features, parser, record, rerank_ranks, setup


def main():
    ap = parser(__doc__)
    ap.add_argument("--feats", default="all", help="'all' or a comma list of feature names (common.FEATS)")
    ap.add_argument("--drop", default="", help="comma list of feature names to leave out")
    ap.add_argument("--extra", default="", choices=["", "head", "headcf"], help="add step 5's learned head score")
    ap.add_argument("--model", default="mlp", choices=["linear", "mlp"])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", required=True, help="name of the run (model file and results row)")
    a = ap.parse_args()
    setup(a)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    t0 = time.time()
    sel = list(range(len(FEATS))) if a.feats == "all" else [FEATS.index(f) for f in a.feats.split(",")]
    sel = [i for i in sel if FEATS[i] not in a.drop.split(",")]

    Xtr, Gtr, _ = load_features(a.cache, "train", sel, a.extra)
    Xtr, Gtr = torch.from_numpy(Xtr), torch.from_numpy(Gtr)
    flat = Xtr.reshape(-1, Xtr.shape[-1])
    mu, sd = flat.mean(0), flat.std(0) + 1e-6
    keep = Gtr.any(1)
    Xk, target = (Xtr[keep] - mu) / sd, Gtr[keep].float().argmax(1)
    Xdev, Gdev, rsum_dev = load_features(a.cache, "dev", sel, a.extra)
    Xdev = (torch.from_numpy(Xdev) - mu) / sd

    net = build_net(Xtr.shape[-1], a.model, a.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs)

    def dev_ranks():
        with torch.no_grad():
            return rerank_ranks(net(Xdev).squeeze(-1).numpy(), Gdev, rsum_dev)

    best, best_state, best_ep = -1.0, None, 0
    for ep in range(a.epochs):
        perm = torch.randperm(len(Xk))
        for b in range(0, len(perm), 256):
            idx = perm[b : b + 256]
            loss = torch.nn.functional.cross_entropy(net(Xk[idx]).squeeze(-1), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        m = fmt(dev_ranks())
        if m["MRR"] + m["H@1"] > best:
            best, best_ep = m["MRR"] + m["H@1"], ep
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    feats = [FEATS[i] for i in sel] + ([f"extra:{a.extra}"] if a.extra else [])
    out = {
        "step": "04_fuse",
        "tag": a.tag,
        "feats": feats,
        "model": a.model,
        "best_epoch": best_ep,
        "train_s": round(time.time() - t0, 1),
        "dev": fmt(dev_ranks()),
    }
    torch.save(
        {"state": best_state, "mu": mu, "sd": sd, "sel": sel, "extra": a.extra, "model": a.model, "hidden": a.hidden},
        a.cache / f"fuse_{a.tag}.pt",
    )
    record(a.cache, out)


if __name__ == "__main__":
    main()
