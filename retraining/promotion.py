"""The promotion rule: does the candidate replace the serving model?

Two judges, both required:

* held-out corrections: candidate held-out MRR - serving held-out MRR >= `min_mrr_delta` less a
  slack of `heldout_slack_mentions` / n (n held-out corrections, at least `min_heldout`). The slack
  is the MRR that noise in a small held-out set moves: one mention slipping from rank 1 to 2 costs
  0.5 / n. Without it, the MELBench learning curve's 250-correction candidate (+5.6 points base-dev
  H@1) was refused for a held-out MRR 0.004 lower on 49 corrections (docs/retraining.md). The
  trusted set below still refuses a candidate that is really worse. This set is drawn from the
  corrections themselves, so a batch of wrong corrections poisons it as much as the training set:
  on its own it cannot refuse bad labels.
* the trusted set, the base dataset's dev split (labels that never come from the store): serving
  base-dev H@1 - candidate base-dev H@1 <= `max_dev_h1_drop`. Without a base dev split the
  candidate's base-dev H@1 is unknown and counts as the worst case, a drop of 1.0: so a run without
  `base_data` is registered but not promoted (an admin may still serve it by hand), unless
  max_dev_h1_drop >= 1 says on purpose that no trusted judge is wanted.

And a check of the labels themselves: at most `max_implausible` of the held-out corrections may be
labelled with an entity that the serving model ranks beyond `implausible_rank` (default: 2 % beyond
rank 1,000). Both quality judges measure harm, and a batch of random wrong labels need not do harm:
on MELBench, 500 random labels on top of 4,000 good ones gave a candidate that was not worse on
either judge (docs/retraining.md#learning-curve). What such a batch cannot hide is that its labels
are implausible: a real correction names an entity the serving model ranks near the top (there
0.0 % of clean held-out labels lay beyond rank 1,000), a random entity of a large KB lies far down
(10.3 % of that poisoned slice). The held-out corrections were never trained on by any model, so the
serving model's ranks of their labels are an independent view. The share is taken over the whole
held-out slice, so a batch diluted in many more good corrections passes this check. A KB of at most
`implausible_rank` entities cannot trip it. A serving model with a lexical unit ranks only its
served shortlist (ranks stop at K + 1), so for this check its heads rank the held-out labels against
the full KB ("label_ranks", retraining/pipeline.py `judge`).
"""

from __future__ import annotations

from .config import RetrainConfig

_EPS = 1e-9  # "not lower" must not fail on float noise (0.800 - 0.795 = 0.005000000000000004)


def decide_promotion(serving: dict, candidate: dict, cfg: RetrainConfig) -> tuple[bool, str]:
    """serving / candidate: {"heldout": metrics, "base_dev": metrics or absent}. Promote only if
    held-out MRR changed by at least `min_mrr_delta` - `heldout_slack_mentions` / n and base-dev H@1
    fell by at most `max_dev_h1_drop` (no base dev split: a drop of 1.0; see the module docstring)."""
    s_h, c_h = serving.get("heldout") or {}, candidate.get("heldout") or {}
    count = int(c_h.get("count", 0))
    if count < max(cfg.min_heldout, 1):
        return False, (
            f"not promoted: {count} held-out correction(s), need at least {max(cfg.min_heldout, 1)} "
            "to judge (collect more corrections or raise holdout)"
        )
    d_mrr = c_h["MRR"] - s_h["MRR"]
    need = cfg.min_mrr_delta - float(cfg.heldout_slack_mentions) / count
    parts = [f"held-out MRR {s_h['MRR']:.4f} -> {c_h['MRR']:.4f} ({d_mrr:+.4f}, required >= {need:+.4f})"]
    ok = d_mrr >= need - _EPS
    s_d, c_d = serving.get("base_dev") or {}, candidate.get("base_dev") or {}
    if c_d.get("count"):
        drop = s_d["H@1"] - c_d["H@1"]
        parts.append(
            f"base dev H@1 {s_d['H@1']:.4f} -> {c_d['H@1']:.4f} (drop {drop:+.4f}, "
            f"allowed <= {cfg.max_dev_h1_drop:.4f})"
        )
    else:
        drop = 1.0  # no trusted judge: the worst case
        parts.append(
            f"no base dev split (the trusted judge): counted as a drop of 1.0, allowed <= "
            f"{cfg.max_dev_h1_drop:.4f} (set base_data to judge on trusted labels)"
        )
    ok = ok and drop <= cfg.max_dev_h1_drop + _EPS
    share = implausible_share(serving, cfg)
    if share is not None:
        n_bad, n = share
        parts.append(
            f"{n_bad} of {n} held-out labels ranked beyond {cfg.implausible_rank} by the serving model "
            f"({n_bad / n:.1%}, allowed <= {cfg.max_implausible:.1%})"
        )
        ok = ok and n_bad / n <= cfg.max_implausible + _EPS
    return ok, ("promoted: " if ok else "not promoted: ") + "; ".join(parts)


def implausible_share(serving: dict, cfg: RetrainConfig) -> tuple[int, int] | None:
    """(held-out labels the serving model ranks beyond `implausible_rank`, held-out labels), or
    None when the serving model's held-out ranks are not known. Full-KB "label_ranks" win over the
    ranks of a served model's shortlist."""
    heldout = serving.get("heldout") or {}
    ranks = heldout.get("label_ranks") or heldout.get("ranks")
    if not ranks:
        return None
    return sum(1 for r in ranks if r > cfg.implausible_rank), len(ranks)
