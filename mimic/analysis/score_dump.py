"""Error-analysis records from a full-KB score dump (`python -m mimic evaluate --scores-out`).

Every mention was scored against every entity, so there is no retrieval stage: the dump is read
block by block (memory-mapped) and each row's ranking, top candidates and unit ranks are computed
with numpy, tie-broken like `mimic.analysis.ranking.ranks_from_scores`.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic.analysis.records import UNITS, MentionAnalysis, classify, finite_or_none, outranked_by_units
from mimic.data.schema import Mention


def _gold_rank(a: np.ndarray, rows: np.ndarray, gold_pos: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Stable rank of the gold in each row of `a` (as mimic.analysis.ranking.ranks_from_scores):
    1 + entities scored higher + equal-scored entities placed before the gold in KB order."""
    g = a[rows, gold_pos][:, None]
    return (a > g).sum(1) + ((a == g) & before).sum(1) + 1


def analyze_score_arrays(
    S,
    S_T,
    S_V,
    S_C,
    gold_positions,
    kb_ids: Sequence[str],
    *,
    mentions: Sequence[Mention] | None = None,
    mention_ids: Sequence[str] | None = None,
    kb_names: Sequence[str] | None = None,
    dataset: str = "",
    model_version: str = "",
    nil_threshold: float | None = None,
    top_k: int = 10,
    rows_per_chunk: int | None = None,
) -> list[MentionAnalysis]:
    """Records from a full-KB score dump (every mention scored against every entity).

    S, S_T, S_V, S_C: [M, N] arrays (numpy or memory maps, see `load_score_dump`); a unit may be
    None (absent) and NaN entries mean the unit does not apply. gold_positions: [M] KB positions of
    the golds, -1 for a NIL gold. kb_ids / kb_names: [N]. `mentions` (same order) supplies ids,
    text and has_image; without it ids are "0".."M-1" and has_image is False.
    NIL: the system answers NIL when the top S < nil_threshold (never when it is None), as the
    linker does. There is no retrieval stage: `retrieved` is true for every in-KB gold.

    Vectorised over blocks of `rows_per_chunk` mentions (default: about 16M scores per block), so a
    5,000 × 100,000 dump is read block by block and never held in memory whole.
    """
    if S is None or getattr(S, "ndim", 0) != 2:
        raise ValueError("S must be a [mentions, entities] array")
    M, N = S.shape
    units = {"S_T": S_T, "S_V": S_V, "S_C": S_C}
    for name, arr in units.items():
        if arr is not None and tuple(arr.shape) != (M, N):
            raise ValueError(f"{name} has shape {tuple(arr.shape)}, S has {(M, N)}")
    gold = np.asarray(gold_positions, dtype=np.int64).reshape(-1)
    if gold.shape != (M,):
        raise ValueError(f"gold has {gold.size} entries for {M} mentions")
    if ((gold < -1) | (gold >= N)).any():
        bad = int(np.flatnonzero((gold < -1) | (gold >= N))[0])
        raise ValueError(f"gold position {int(gold[bad])} of mention {bad} is outside the KB (0..{N - 1}, -1 = NIL)")
    if len(kb_ids) != N:
        raise ValueError(f"{len(kb_ids)} KB ids for {N} score columns")
    if mentions is not None and len(mentions) != M:
        raise ValueError(f"{len(mentions)} mentions for {M} score rows")
    if mention_ids is None:
        mention_ids = [m.id for m in mentions] if mentions is not None else [str(i) for i in range(M)]
    if len(mention_ids) != M:
        raise ValueError(f"{len(mention_ids)} mention ids for {M} score rows")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    names = list(kb_names) if kb_names is not None else [""] * N
    chunk = rows_per_chunk or max(1, (1 << 24) // max(N, 1))
    kk = min(top_k + 1, N)  # one more than shown, so the last shown candidate has a margin
    pos = np.arange(N)[None, :]
    records = []
    for start in range(0, M, chunk):
        stop = min(start + chunk, M)
        s = np.asarray(S[start:stop])
        if np.isnan(s).any():
            r, _ = np.argwhere(np.isnan(s))[0]
            raise ValueError(f"S is NaN for mention {start + int(r)}: not a valid score dump")
        b = stop - start
        rows = np.arange(b)
        g_pos = gold[start:stop]
        in_kb = g_pos >= 0
        gp = np.where(in_kb, g_pos, 0)
        before = pos < gp[:, None]  # entities placed before the gold in KB order (tie-break)

        gold_rank = _gold_rank(s, rows, gp, before)
        unit_vals, unit_rank = {}, {}
        for u, arr in units.items():
            if arr is None:
                continue
            ua = np.asarray(arr[start:stop])
            unit_vals[u] = ua
            unit_rank[u] = _gold_rank(
                ua, rows, gp, before
            )  # NaN compares false, so inapplicable entities never outrank

        # Top kk per row: the kk-th largest value bounds them; sorting the (few) entities at or above
        # it by (-score, position) gives the exact stable order even through ties at the boundary.
        kth = np.partition(s, N - kk, axis=1)[:, N - kk]
        for i in range(b):
            idx = np.flatnonzero(s[i] >= kth[i])
            order = idx[np.lexsort((idx, -s[i, idx]))][:kk]
            cands = []
            for r, j in enumerate(order[:top_k]):
                nxt = float(s[i, order[r + 1]]) if r + 1 < len(order) else None
                cands.append(
                    {
                        "entity_id": kb_ids[j],
                        "name": names[j],
                        "S": float(s[i, j]),
                        **{u: (finite_or_none(unit_vals[u][i, j]) if u in unit_vals else None) for u in UNITS},
                        "rank": r + 1,
                        "margin": float(s[i, j]) - nxt if nxt is not None else None,
                        "retrievers": [],
                    }
                )
            g = int(gp[i])
            if in_kb[i]:
                gold_id = kb_ids[g]
                gold_scores = {
                    "S": float(s[i, g]),
                    **{u: (finite_or_none(unit_vals[u][i, g]) if u in unit_vals else None) for u in UNITS},
                }
                rank = int(gold_rank[i])
                u_ranks = {
                    u: (int(unit_rank[u][i]) if u in unit_vals and gold_scores[u] is not None else None) for u in UNITS
                }
            else:
                gold_id, gold_scores, rank, u_ranks = None, None, None, {u: None for u in UNITS}
            top = cands[0]
            nil = nil_threshold is not None and top["S"] < nil_threshold
            m = mentions[start + i] if mentions is not None else None
            records.append(
                MentionAnalysis(
                    mention_id=str(mention_ids[start + i]),
                    dataset=dataset,
                    sentence=m.sentence if m else "",
                    mention=m.mention if m else "",
                    has_image=bool(m and m.image),
                    gold=gold_id,
                    retrieved=bool(in_kb[i]),
                    shortlist_size=N,
                    gold_rank=rank,
                    predicted=None if nil else top["entity_id"],
                    nil_predicted=nil,
                    candidates=cands,
                    gold_scores=gold_scores,
                    label=classify(gold_id, bool(in_kb[i]), rank, nil),
                    outranked_by=outranked_by_units(top, gold_scores, rank),
                    unit_ranks=u_ranks,
                    model_version=model_version,
                )
            )
    return records


def load_score_dump(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an `evaluate --scores-out` .npz: S, S_T, S_V, S_C [M, N], gold, rank [M].

    The evaluator stores the .npz uncompressed, so each member is memory-mapped in place (a
    5,000 × 100,000 dump is 8 GB); a compressed member is read into memory instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score dump not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            members = {Path(i.filename).stem: i for i in z.infolist() if i.filename.endswith(".npy")}
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not an .npz score dump") from None
    missing = [k for k in ("S", "gold") if k not in members]
    if missing:
        raise ValueError(f"{path}: no array {', '.join(missing)} (has: {', '.join(sorted(members)) or 'none'})")
    out = {}
    with open(path, "rb") as f:
        for name, info in members.items():
            arr = None
            if info.compress_type == zipfile.ZIP_STORED and info.file_size > 0:
                f.seek(info.header_offset)
                head = f.read(30)
                if head[:4] != b"PK\x03\x04":
                    raise ValueError(f"{path}: corrupt zip entry {info.filename}")
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                if not dtype.hasobject and int(np.prod(shape)) > 0:
                    arr = np.memmap(
                        path, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order="F" if fortran else "C"
                    )
            if arr is None:
                with np.load(path, allow_pickle=False) as z:
                    arr = z[name]
            out[name] = arr
    return out
