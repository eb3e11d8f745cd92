"""Serving (imported through `mimic.serving.linker`): retrieve a shortlist, re-rank it, explain it (BLINK-style).

    linker = Linker.from_paths("ckpt/", "index/")
    result = linker.link("Robertson as a member of the Milwaukee Bucks", "Robertson", image=None)

Candidate generation merges four retrievers, each returning its top K:
  model    faiss over the bi-encoder part of MIMIC's own score (G2G/6 + S_C/3), so it agrees with
           the re-ranker by construction
  text     faiss, backbone text vector of "mention [SEP] sentence" vs entity text vectors
  image    faiss, query image vector vs entity image vectors (when the query has an image)
  text→image  the query text vector vs entity image vectors (CLIP only: a joint space)
  lexical  character n-gram TF-IDF of the mention against names and aliases
The union is cut to K by reciprocal-rank fusion (plus those of the model retriever's top K/2 that the
cut left out, for a model without a lexical unit), then the full model scores the shortlist
(S, S_T, S_V, S_C); a model with a lexical unit (`mimic.models.lexical_unit`) adds S_L from the
shortlist's pair features (`mimic.serving.pair_features`) and ranks by S = β·S_MIMIC + S_L.
`Linker.shortlists` is that one scoring path; served evaluation and the unit's training use it too.
Full-KB exhaustive scoring stays available (`exhaustive_scores`) for
evaluation and for measuring how often the shortlist changes the top-1.

A mention given as text is located in its sentence tolerantly (`mimic.data.mentions.find_mention`):
exact match first, else a match after normalising case, punctuation, whitespace and Unicode (NFKC),
mapped back to a real character span, or the mention's words in order with a few words dropped
between them; MELBench strips some punctuation and particles from its mentions ("UNCLE" for
"U.N.C.L.E.", "Suleiman Magnificent" for "Suleiman the Magnificent"). A mention found nowhere
is, with `absent_mention="warn"`, linked by its text alone (the sentence still serves as context,
as in `evaluate`; start/end are None) and the result carries a warning; with "error" (the
default) it is refused. Every match that is not exact is
reported in `LinkResult.warnings`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mimic.data import images as imaging
from mimic.data.mentions import find_mention
from mimic.data.schema import Entity, Mention
from mimic.models.checkpoint import load_checkpoint
from mimic.models.linking_model import LinkingModel, entity_text, mention_text
from mimic.models.modeling_mimic import MentionCache
from mimic.serving.index import KBIndex
from mimic.serving.pair_features import pair_features
from mimic.serving.results import Candidate, Explanation, LinkInputError, LinkResult

MAX_SENTENCE_CHARS = 10_000
MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused (decompression-bomb guard)


@dataclass
class _Query:
    sentence: str
    mention: str
    start: int | None
    end: int | None
    image: object  # PIL image or None
    warnings: list[str] = field(default_factory=list)
    others: tuple[str, ...] = ()  # the other mentions of the same sentence (context for the lexical unit)


@dataclass
class Shortlist:
    """One query's retrieved candidates and their scores, in retrieval (fusion) order.

    rows [K] index rows; ranks[j]: {retriever: 0-based rank} of candidate j; S/S_T/S_V/S_C [K]
    (S is what the linker ranks by: MIMIC's S, fused with S_L when the model has a lexical unit);
    S_mimic [K] MIMIC's own S; S_L [K] or None; features [K, F] the lexical unit's inputs or None."""

    rows: torch.Tensor
    ranks: list[dict[str, int]]
    S: torch.Tensor
    S_T: torch.Tensor | None
    S_V: torch.Tensor | None
    S_C: torch.Tensor | None
    S_mimic: torch.Tensor
    S_L: torch.Tensor | None = None
    features: np.ndarray | None = None


class Linker:
    scoring = "model"
    # retrievers whose shortlist this linker uses (the zero-shot linker drops the untrained "model")
    retriever_names: tuple[str, ...] = ("model", "text", "image", "text→image", "lexical")

    def __init__(
        self,
        model: LinkingModel,
        index: KBIndex,
        *,
        shortlist: int = 64,
        keep_model: int | None = None,
        allowed_image_dirs=None,
        nil_threshold: float | None = None,
        explain_top: int = 3,
        absent_mention: str = "error",
    ):
        """`absent_mention`: what to do with a mention text found nowhere in its sentence, even after
        normalising: "error" refuses it (LinkInputError), "warn" links the text without a span and
        says so in `LinkResult.warnings`."""
        if absent_mention not in ("error", "warn"):
            raise ValueError(f"absent_mention must be 'error' or 'warn', got {absent_mention!r}")
        self.absent_mention = absent_mention
        index.check_model(model)
        self.model = model.eval()
        self.index = index
        self.shortlist = shortlist
        # the model retriever's top rows always re-ranked (default: half the shortlist; see `shortlists`)
        self.keep_model = shortlist // 2 if keep_model is None else keep_model
        self.allowed_image_dirs = allowed_image_dirs
        self.nil_threshold = nil_threshold if nil_threshold is not None else index.manifest.get("nil_threshold")
        self.explain_top = explain_top
        self.cross_modal = (
            model.backbone.describe().get("type") == "clip"
            and model.backbone.dims.text_global == model.backbone.dims.image_global
        )
        self.patch_grid = _grid_side(model.config.num_image_tokens)

    @classmethod
    def from_paths(cls, checkpoint: str | Path, index: str | Path, **kw) -> Linker:
        return cls(load_checkpoint(checkpoint), KBIndex(index), **kw)

    # -- input validation ------------------------------------------------------------------------
    def _query(self, sentence, mention, image, others=None) -> _Query:
        if isinstance(sentence, bytes):
            try:
                sentence = sentence.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LinkInputError(f"sentence is not valid UTF-8 (byte {exc.start})") from None
        if not isinstance(sentence, str) or not sentence.strip():
            raise LinkInputError("sentence is empty")
        if len(sentence) > MAX_SENTENCE_CHARS:
            raise LinkInputError(f"sentence is too long ({len(sentence)} characters, at most {MAX_SENTENCE_CHARS})")
        if isinstance(mention, bytes):
            try:
                mention = mention.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LinkInputError(f"mention is not valid UTF-8 (byte {exc.start})") from None
        warnings: list[str] = []
        if isinstance(mention, (tuple, list)) and len(mention) == 2:
            start, end = mention
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
                raise LinkInputError("mention span must be two integers (start, end)")
            if not 0 <= start < end <= len(sentence):
                raise LinkInputError(
                    f"mention span ({start}, {end}) is out of range for a sentence of {len(sentence)} characters"
                )
            text = sentence[start:end]
            if not text.strip():
                raise LinkInputError(f"mention span ({start}, {end}) covers only whitespace")
        elif isinstance(mention, str):
            text = mention.strip()
            if not text:
                raise LinkInputError("mention is empty")
            start, end, how = find_mention(text, sentence)
            if how in ("normalised", "gapped"):
                assert start is not None and end is not None
                warnings.append(
                    f"mention {text!r:.80} does not occur verbatim in the sentence; matched "
                    f"{sentence[start:end]!r:.80} at {start}-{end} after normalising case, punctuation and spaces"
                    + (" and skipping words between the mention's words" if how == "gapped" else "")
                )
            elif how == "absent":
                if self.absent_mention == "error":
                    raise LinkInputError(f"mention {text!r:.80} does not occur in the sentence")
                warnings.append(
                    f"mention {text!r:.80} does not occur in the sentence, even after normalising case, "
                    "punctuation and spaces; linked by the mention text alone, without a span"
                )
        else:
            raise LinkInputError("mention must be a string or a (start, end) span")
        img = None
        if image is not None:
            try:
                img = imaging.load_image(
                    image,
                    allowed_dirs=self.allowed_image_dirs,
                    max_pixels=MAX_IMAGE_PIXELS,
                    convert_rgb=(self.model.config.mode == "fixed"),
                )
            except imaging.ImageError as exc:
                raise LinkInputError(f"image rejected: {exc}") from None
            if self.model.config.mode == "compat" and img.mode != "RGB":
                img = img.convert("RGB")  # serving never silently drops a user's image
        if others is None:
            others = ()
        elif isinstance(others, str) or not all(isinstance(o, str) for o in others):
            raise LinkInputError("other_mentions must be a list of strings")
        return _Query(sentence, text, start, end, img, warnings, tuple(o for o in others if o.strip())[:50])

    # -- encoding ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, queries: Sequence[_Query]):
        texts = [mention_text(Mention(id="q", sentence=q.sentence, mention=q.mention)) for q in queries]
        text, image = self.model.backbone_features(texts, [q.image for q in queries])
        side = self.model.heads.side_features(text, image)
        return self.model.heads.mention_cache(side), text, image, texts

    # -- retrieval -----------------------------------------------------------------------------------
    def _retrieve(
        self, mc: MentionCache, text_g: torch.Tensor, image_g: torch.Tensor, queries, k: int, keep_model: int = 0
    ):
        """-> per query: list of (row, {retriever name: 0-based rank}) in fused order: the fused top k,
        then those of the model retriever's top `keep_model` that fusion left out."""
        idx = self.index
        per_query: list[dict[int, list]] = [dict() for _ in queries]
        kk = min(k, len(idx))

        def add(name, rows):
            if name not in self.retriever_names:
                return
            for qi, rr in enumerate(rows):
                for rank, r in enumerate(rr):
                    if r >= 0:
                        per_query[qi].setdefault(int(r), []).append((name, rank))

        kept: list[list[int]] = [[] for _ in queries]  # the model retriever's top keep_model rows
        if "model" in self.retriever_names:
            model_q = self.model.heads.retrieval_vector(mc, "mention").cpu().numpy()
            found = idx.retrievers["model"].search(np.ascontiguousarray(model_q), max(kk, keep_model))[1]
            add("model", found[:, :kk])  # fusion sees the same k rows of every retriever
            kept = [[int(r) for r in rr[:keep_model]] for rr in found]
        tq = _unit_np(text_g)
        add("text", idx.retrievers["text"].search(tq, kk)[1])
        has = [q.image is not None for q in queries]
        image = idx.retrievers.get("image")
        if image is not None and image.live:  # rows found are index rows (the retriever maps them)
            ki = min(kk, image.live)
            if any(has):
                iq = _unit_np(image_g)
                rows = image.search(iq, ki)[1]
                add("image", [r if h else [] for r, h in zip(rows, has)])
            if self.cross_modal:
                add("text→image", image.search(tq, ki)[1])
        add("lexical", idx.lexical.search([q.mention for q in queries], kk)[1])
        out = []
        for pool, model_rows in zip(per_query, kept):
            # reciprocal-rank fusion (k = 60) decides which of the union make the cut
            fused = sorted(pool.items(), key=lambda kv: (-sum(1.0 / (60 + r) for _, r in kv[1]), kv[0]))
            cut = [(row, dict(src)) for row, src in fused[:k]]
            seen = {row for row, _ in cut}
            for rank, row in enumerate(model_rows):  # then the model retriever's best that fusion left out
                if row >= 0 and row not in seen:
                    cut.append((row, dict(pool.get(row, [])) | {"model": rank}))
            out.append(cut)
        return out

    # -- public API ------------------------------------------------------------------------------
    def link(self, sentence, mention, image=None, top_k: int = 10, explain: bool = True) -> LinkResult:
        """Link one mention. `mention` is the mention string or a (start, end) character span."""
        return self.link_batch([{"sentence": sentence, "mention": mention, "image": image}], top_k, explain)[0]

    def link_batch(self, queries: Sequence[dict], top_k: int = 10, explain: bool = True) -> list[LinkResult]:
        """Link many mentions (dicts with sentence, mention, optional image) in one encoder batch.

        The first bad query raises LinkInputError; `link_each` isolates bad queries instead."""
        t0 = time.perf_counter()
        qs = [
            self._query(q.get("sentence"), q.get("mention"), q.get("image"), q.get("other_mentions")) for q in queries
        ]
        return self._link_queries(qs, top_k, explain, t0)

    def link_each(
        self, queries: Sequence[dict], top_k: int = 10, explain: bool = True, batch_size: int = 32
    ) -> list[LinkResult | LinkInputError]:
        """Link many mentions, one answer per query in order: a LinkResult, or the LinkInputError
        that refused that query. A bad query never costs the others their result; good queries
        are encoded `batch_size` at a time."""
        out: list[LinkResult | LinkInputError | None] = [None] * len(queries)
        good: list[tuple[int, _Query]] = []
        for i, q in enumerate(queries):
            try:
                good.append(
                    (i, self._query(q.get("sentence"), q.get("mention"), q.get("image"), q.get("other_mentions")))
                )
            except LinkInputError as exc:
                out[i] = exc
        for b in range(0, len(good), max(1, batch_size)):
            chunk = good[b : b + max(1, batch_size)]
            for (i, _), r in zip(chunk, self._link_queries([q for _, q in chunk], top_k, explain)):
                out[i] = r
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    @torch.no_grad()
    def shortlists(self, qs: Sequence[_Query], features: bool = False):
        """Encode, retrieve and score queries -> (list of `Shortlist`, (mention cache, text, image, texts),
        {"encode", "retrieve", "rerank": seconds for the whole batch}).

        The one scoring path of serving, served evaluation and lexical-unit training. `features`:
        also compute the lexical unit's pair features when the model has no unit (for training one)."""
        t0 = time.perf_counter()
        mc, text, image, texts = self._encode(qs)
        t1 = time.perf_counter()
        unit = self.model.lexical_unit
        need = features or unit is not None
        # The model retriever's score is the exact bi-encoder part of S, so its best rows are kept
        # even when fusion ranks them below K: a plain MIMIC ranking then matches the exhaustive
        # top-1 far more often (bench-link at 100,000: fusion alone missed 2 of 100 and 2 of 50, this
        # 0 and 1). Shortlists that feed the lexical unit's features (its training and its serving)
        # are cut by fusion alone: the unit learned them that way (its `ambig` counts the shortlist).
        keep = 0 if need or "model" not in self.retriever_names else self.keep_model
        retrieved = self._retrieve(mc, text.global_, image.global_, qs, self.shortlist, keep)
        t2 = time.perf_counter()
        feats = self._pair_features(qs, retrieved, text.global_) if need else [None] * len(qs)
        out = []
        for qi, (sl, X) in enumerate(zip(retrieved, feats)):
            rows = torch.tensor([r for r, _ in sl], dtype=torch.long)
            S, S_T, S_V, S_C = self._score_rows(mc[qi : qi + 1], text, image, qi, rows)
            S_L = None
            S_mimic = S
            if unit is not None and X is not None:
                S_L = unit(torch.from_numpy(X).to(self.model.device)).to(S.dtype)
                S = unit.fuse(S_mimic, S_L)
            out.append(Shortlist(rows, [src for _, src in sl], S, S_T, S_V, S_C, S_mimic, S_L, X))
        seconds = {"encode": t1 - t0, "retrieve": t2 - t1, "rerank": time.perf_counter() - t2}
        return out, (mc, text, image, texts), seconds

    def _pair_features(self, qs: Sequence[_Query], retrieved, text_g: torch.Tensor) -> list[np.ndarray]:
        """The lexical unit's features [K, F] for each query's shortlist (see `mimic.serving.pair_features`)."""
        lex = self.index.lexical
        rows = [np.asarray([r for r, _ in sl], dtype=np.int64) for sl in retrieved]
        tf_mention = lex.similarity([q.mention for q in qs], rows)
        tf_sentence = lex.similarity([q.sentence for q in qs], rows)
        tq = _unit_np(text_g)
        out = []
        for qi, (q, sl) in enumerate(zip(qs, retrieved)):
            dense = self.index.text_vectors(rows[qi]) @ tq[qi]
            out.append(
                pair_features(
                    mention=q.mention,
                    sentence=q.sentence,
                    span=(q.start, q.end) if q.start is not None and q.end is not None else None,
                    other_mentions=q.others,
                    names=[self.index.records[r]["name"] for r in rows[qi]],
                    tfidf=tf_mention[qi],
                    name_in_sentence=tf_sentence[qi],
                    dense=dense,
                    ranks=[src for _, src in sl],
                )
            )
        return out

    @torch.no_grad()
    def _link_queries(self, qs: list[_Query], top_k: int, explain: bool, t0: float | None = None) -> list[LinkResult]:
        if not qs:
            return []
        t0 = time.perf_counter() if t0 is None else t0
        t_valid = time.perf_counter() - t0  # input checks and image decoding before this call
        scored, (mc, text, image, texts), sec = self.shortlists(qs)
        results = []
        n = len(qs)
        for qi, (q, sl) in enumerate(zip(qs, scored)):
            ts = time.perf_counter()
            S = sl.S
            order = torch.argsort(-S, stable=True)[:top_k]
            t3 = time.perf_counter()
            cands = []
            for rank, j in enumerate(order.tolist(), 1):
                rec = self.index.records[int(sl.rows[j])]
                nxt = float(S[order[rank]]) if rank < len(order) else None
                cands.append(
                    Candidate(
                        entity_id=rec["id"],
                        name=rec["name"],
                        description=rec.get("text", ""),
                        images=rec.get("images", []),
                        S=float(S[j]),
                        S_T=_opt(sl.S_T, j),
                        S_V=_opt(sl.S_V, j),
                        S_C=_opt(sl.S_C, j),
                        rank=rank,
                        margin=(float(S[j]) - nxt) if nxt is not None else None,
                        retrievers=sorted(sl.ranks[j]),
                        S_L=_opt(sl.S_L, j),
                    )
                )
            if explain and cands:
                self._explain(
                    mc[qi : qi + 1],
                    texts[qi],
                    cands[: self.explain_top],
                    sl.rows[order[: self.explain_top]],
                    qs[qi],
                    text,
                    image,
                    qi,
                )
            top_s = cands[0].S if cands else None
            nil = top_s is None or (self.nil_threshold is not None and top_s < self.nil_threshold)  # None: no cands
            t4 = time.perf_counter()
            results.append(
                LinkResult(
                    sentence=q.sentence,
                    mention=q.mention,
                    start=q.start,
                    end=q.end,
                    has_image=q.image is not None,
                    candidates=cands,
                    nil=nil,
                    nil_threshold=self.nil_threshold,
                    shortlist_size=len(sl.rows),
                    timings_ms={
                        # the batch's times per query
                        "encode": round((t_valid + sec["encode"]) * 1000 / n, 3),
                        "retrieve": round(sec["retrieve"] * 1000 / n, 3),
                        "rerank": round((sec["rerank"] / n + t3 - ts) * 1000, 3),
                        "explain": round((t4 - t3) * 1000, 3),
                    },
                    scoring=self.scoring,
                    warnings=list(q.warnings),
                )
            )
        return results

    def _score_rows(self, mq: MentionCache, text, image, qi: int, rows: torch.Tensor):
        """Score one query against index rows -> (S, S_T, S_V, S_C), each [len(rows)] (a unit may be None)."""
        out = self.model.heads.score(mq, self._rows_cache(rows))
        return out.S[0], out.S_T[0], out.S_V[0], out.S_C[0]

    def _rows_cache(self, rows: torch.Tensor):
        """Index rows as float32 on the model's device (the index itself stays fp16 in CPU RAM)."""
        dev = self.model.device
        return self.index.cache[rows].apply(lambda t: (t.float() if t.is_floating_point() else t).to(dev))

    def explain(self, sentence, mention, entity_id: str, image=None) -> Explanation:
        """Explanation for any KB entity (not only the top candidates)."""
        q = self._query(sentence, mention, image)
        if entity_id not in self.index.position:
            raise LinkInputError(f"entity {entity_id!r} is not in the index")
        mc, text, img, texts = self._encode([q])
        row = torch.tensor([self.index.position[entity_id]])
        c = Candidate(entity_id, "", "", [], 0, 0, 0, 0, 0, None, [])
        self._explain(mc, texts[0], [c], row, q, text, img, 0)
        assert c.explanation is not None  # _explain sets it on every candidate
        return c.explanation

    def _explain(
        self,
        mq: MentionCache,
        mtext: str,
        cands: list[Candidate],
        rows: torch.Tensor,
        query=None,
        text=None,
        image=None,
        qi: int = 0,
    ):
        ec = self._rows_cache(rows)
        out = self.model.heads.score(mq, ec, return_attention=True)
        # return_attention=True: the attention maps are set
        assert out.tglu_attention is not None
        assert out.cmfu_mention_attention is not None and out.cmfu_entity_attention is not None
        tok = self.model.backbone.tokenize
        L = self.model.config.text_max_length
        m_ids = tok([mtext], L)["input_ids"][0]
        m_len = int(mq.t_mask[0].sum())
        m_tokens = token_strings(self.model.backbone, m_ids[:m_len])
        m_grid, m_cls = self._grid(out.cmfu_mention_attention[0], bool(mq.has_image[0]))
        for j, c in enumerate(cands):
            rec = self.index.records[int(rows[j])]
            e_ids = tok([entity_text(entity_from_record(rec))], L)["input_ids"][0]
            e_len = int(ec.t_mask[j].sum())
            att = out.tglu_attention[j, 0, :e_len, :m_len]
            e_grid, e_cls = self._grid(out.cmfu_entity_attention[j], bool(ec.has_image[j]))
            c.explanation = Explanation(
                m_tokens,
                token_strings(self.model.backbone, e_ids[:e_len]),
                att.float().tolist(),
                m_grid,
                e_grid,
                m_cls,
                e_cls,
            )

    def _grid(self, attn: torch.Tensor, has_image: bool):
        if not has_image:
            return None, None
        a = attn.float()
        cls = None
        if a.numel() == self.patch_grid**2 + 1:  # CLIP: token 0 is CLS, the rest the patch grid
            cls, a = float(a[0]), a[1:]
        return a.reshape(self.patch_grid, self.patch_grid).tolist(), cls

    # -- evaluation helpers --------------------------------------------------------------------------
    @torch.no_grad()
    def exhaustive_scores(self, sentence, mention, image=None, chunk: int = 8192) -> torch.Tensor:
        """MIMIC's S of this query against every entity of the index, in index order (for checks and
        benchmarks; a lexical unit, which scores only the shortlist, is not applied)."""
        q = self._query(sentence, mention, image)
        mc, *_ = self._encode([q])
        parts = []
        for s in range(0, len(self.index), chunk):
            ec = self.index.cache[s : s + chunk].apply(lambda t: t.float() if t.is_floating_point() else t)
            parts.append(self.model.heads.score(mc, ec).S[0])
        return torch.cat(parts)

    def calibrate_nil(self, mentions: Sequence[Mention], save: bool = True) -> dict:
        """Choose the NIL threshold on a dev set with gold ids in the KB.

        Each mention gives one in-KB query (its top candidate should be linked when it is the gold)
        and one simulated out-of-KB query (the same mention with its gold removed: the best
        remaining candidate should be refused). The threshold maximises accuracy over both."""
        linked, refused = [], []
        for m in mentions:
            r = self.link(
                m.sentence,
                m.mention if m.start is None else (m.start, m.end),
                m.image,
                top_k=self.shortlist,
                explain=False,
            )
            cands = r.candidates
            if not cands:
                continue
            linked.append((cands[0].S, cands[0].entity_id == m.answer))
            rest = [c for c in cands if c.entity_id != m.answer]
            if rest:
                refused.append(rest[0].S)
        if not linked:
            raise ValueError("no mention could be linked: cannot calibrate")
        grid = sorted({s for s, _ in linked} | set(refused))
        best: tuple[float, float | None] = (-1.0, None)
        for t in [grid[0] - 1.0] + grid + [grid[-1] + 1.0]:
            acc = (sum(ok and s >= t for s, ok in linked) + sum(s < t for s in refused)) / (len(linked) + len(refused))
            if acc > best[0]:
                best = (acc, t)
        details = {"threshold": best[1], "accuracy": best[0], "in_kb": len(linked), "simulated_nil": len(refused)}
        self.nil_threshold = best[1]
        if save:
            self.index.set_nil_threshold(best[1], details)
        return details


def _opt(t, j) -> float | None:
    """A unit's score for candidate j; None where the unit does not apply (absent or NaN)."""
    if t is None:
        return None
    v = float(t[j])
    return None if v != v else v


def entity_from_record(rec: dict):
    return Entity(id=rec["id"], name=rec["name"], text=rec.get("text", ""))


def _grid_side(p: int) -> int:
    for n in (p, p - 1):
        r = int(round(n**0.5))
        if r * r == n:
            return r
    return int(p**0.5)


def _unit_np(t: torch.Tensor) -> np.ndarray:
    a = t.float().cpu().numpy()
    return np.ascontiguousarray(a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def token_strings(backbone, ids) -> list[str]:
    tok = getattr(backbone, "tokenizer", None)
    if tok is None:
        return [str(int(i)) for i in ids]
    return [t.replace("</w>", "") for t in tok.convert_ids_to_tokens([int(i) for i in ids])]
