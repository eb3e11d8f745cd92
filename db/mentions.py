"""Mentions (with their stored image) and model predictions; the corpus import is in mention_import.py."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from mimic.data.mentions import locate_mention

from . import statements as Q
from ._base import MAX_NAME, MAX_SENTENCE, StoreBase, check_float, check_int, check_text
from .errors import Conflict, InvalidInput, InvalidSpan, UnknownEntity
from .images import StoredImage
from .models import Image, KbEntity, Mention, Prediction, PredictionCandidate, utcnow
from .records import MentionRecord, PredictionRecord


@dataclass(frozen=True)
class MentionInput:
    """A validated mention, ready to insert (image already stored)."""

    uid: str
    source: str
    sentence: str
    mention: str
    start: int
    end: int
    image: StoredImage | None


@dataclass(frozen=True)
class CandidateInput:
    entity_id: str
    s: float
    s_t: float | None
    s_v: float | None
    s_c: float | None


def check_span(sentence: Any, mention: Any, start: Any, end: Any, field: str = "") -> tuple[str, str, int, int]:
    """Validate (sentence, mention text, start, end); locate the mention when no span is given.

    The span is character offsets into `sentence`, end exclusive, non-empty, and
    sentence[start:end] must equal the mention text when both are given.
    """
    p = f"{field}." if field else ""
    check_text(sentence, f"{p}sentence", max_len=MAX_SENTENCE)
    if mention is not None:
        check_text(mention, f"{p}mention", max_len=MAX_SENTENCE)
    if start is None and end is None:
        if mention is None:
            raise InvalidSpan("give the mention text or its start/end offsets", f"{p}mention")
        start, end = locate_mention(mention, sentence)
        if start is None:
            raise InvalidSpan(f"mention {mention!r:.80} does not occur in the sentence", f"{p}mention")
    elif start is None or end is None:
        raise InvalidSpan("give both start and end, or neither", f"{p}start" if start is None else f"{p}end")
    check_int(start, f"{p}start")
    check_int(end, f"{p}end")
    if not 0 <= start < end <= len(sentence):
        raise InvalidSpan(
            f"span {start}..{end} is outside the sentence (length {len(sentence)}) or empty",
            f"{p}start" if not 0 <= start < len(sentence) else f"{p}end",
        )
    covered = sentence[start:end]
    if mention is None:
        mention = covered
    elif covered != mention:
        raise InvalidSpan(
            f"sentence[{start}:{end}] is {covered!r:.80}, not the mention text {mention!r:.80}", f"{p}start"
        )
    return sentence, mention, start, end


def default_uid(source: str, sentence: str, start: int, end: int, image_sha: str | None) -> str:
    """A mention uid derived from its content, so importing the same mention twice finds it again."""
    h = hashlib.sha256(json.dumps([source, sentence, start, end, image_sha]).encode("utf-8")).hexdigest()
    return f"m-{h[:32]}"


def check_candidates(candidates: Any, field: str = "candidates") -> list[CandidateInput]:
    """Candidates as dicts {entity_id, S, S_T, S_V, S_C} (lower-case keys accepted) or tuples
    (entity_id, S[, S_T, S_V, S_C]); returned ranked by S, highest first (stable on ties)."""
    if not isinstance(candidates, (list, tuple)):
        raise InvalidInput(f"expected a list, got {type(candidates).__name__}", field)
    out = []
    for i, c in enumerate(candidates):
        f = f"{field}[{i}]"
        if isinstance(c, dict):
            get = lambda *keys, c=c: next((c[k] for k in keys if k in c), None)
            eid, s, st, sv, sc = (
                get("entity_id", "id", "qid"),
                get("S", "s", "score"),
                get("S_T", "s_t"),
                get("S_V", "s_v"),
                get("S_C", "s_c"),
            )
        elif isinstance(c, (list, tuple)) and 2 <= len(c) <= 5:
            eid, s, st, sv, sc = (list(c) + [None] * 3)[:5]
        else:
            raise InvalidInput("expected {entity_id, S, S_T, S_V, S_C} or (entity_id, S, ...)", f)
        if isinstance(eid, int) and not isinstance(eid, bool):
            eid = str(eid)
        out.append(
            CandidateInput(
                entity_id=check_text(eid, f"{f}.entity_id", max_len=MAX_NAME),
                s=check_float(s, f"{f}.S"),
                s_t=check_float(st, f"{f}.S_T", optional=True),
                s_v=check_float(sv, f"{f}.S_V", optional=True),
                s_c=check_float(sc, f"{f}.S_C", optional=True),
            )
        )
    ids = [c.entity_id for c in out]
    if len(set(ids)) != len(ids):
        raise InvalidInput("the same entity appears twice", field)
    return sorted(out, key=lambda c: -c.s)


class MentionsMixin(StoreBase):
    # -- mentions ----------------------------------------------------------------------------

    def prepare_mention(
        self,
        sentence: Any,
        mention: Any = None,
        start: Any = None,
        end: Any = None,
        *,
        image: str | Path | bytes | None = None,
        source: Any = "",
        uid: Any = None,
        field: str = "",
    ) -> MentionInput:
        """Validate a mention and store its image (outside any transaction: an image file without a
        row is harmless, it is content-addressed and reused)."""
        p = f"{field}." if field else ""
        sentence, mention, start, end = check_span(sentence, mention, start, end, field)
        check_text(source, f"{p}source", max_len=MAX_NAME, allow_empty=True)
        stored = self.images.put(image, f"{p}image") if image is not None else None
        if uid is None:
            uid = default_uid(source, sentence, start, end, stored.sha256 if stored else None)
        elif isinstance(uid, int) and not isinstance(uid, bool):
            uid = str(uid)
        check_text(uid, f"{p}uid", max_len=255)
        return MentionInput(
            uid=uid, source=source, sentence=sentence, mention=mention, start=start, end=end, image=stored
        )

    def _ensure_image_row(self, s: Session, img: StoredImage) -> None:
        if s.get(Image, img.sha256) is None:
            s.add(
                Image(
                    sha256=img.sha256,
                    ext=img.ext,
                    width=img.width,
                    height=img.height,
                    size_bytes=img.size_bytes,
                    created_at=utcnow(),
                )
            )
            s.flush()

    def _insert_mention(self, s: Session, m: MentionInput, field: str = "") -> tuple[Mention, bool]:
        """Insert, or return the existing mention with this uid (True when created).

        Re-adding a uid with the same content is a no-op; with different content it is a Conflict
        (the uid is what annotations and the journal refer to, it must not change meaning)."""
        row = s.scalar(select(Mention).where(Mention.uid == m.uid))
        sha = m.image.sha256 if m.image else None
        if row is not None:
            if (row.sentence, row.start, row.end, row.image_sha256) != (m.sentence, m.start, m.end, sha):
                raise Conflict(
                    f"mention uid {m.uid!r} already exists with a different sentence, span or image",
                    f"{field}.uid" if field else "uid",
                )
            return row, False
        if m.image is not None:
            self._ensure_image_row(s, m.image)
        row = Mention(
            uid=m.uid,
            source=m.source,
            sentence=m.sentence,
            mention=m.mention,
            start=m.start,
            end=m.end,
            image_sha256=sha,
            margin=None,
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
        return row, True

    def add_mention(
        self,
        sentence: str,
        mention: str | None = None,
        start: int | None = None,
        end: int | None = None,
        *,
        image: str | Path | bytes | None = None,
        source: str = "",
        uid: str | None = None,
    ) -> MentionRecord:
        """Add one mention (idempotent per uid). Without start/end the mention text is located in
        the sentence; without a uid one is derived from the content."""
        m = self.prepare_mention(sentence, mention, start, end, image=image, source=source, uid=uid)
        return self._write(lambda s, ev: self._mention_record(s, self._insert_mention(s, m)[0]))

    def get_mention(self, mention: int | str) -> MentionRecord:
        """A mention by integer id or uid."""
        return self.read_transaction(lambda s: self._mention_record(s, self._mention_row(s, mention)))

    def count_mentions(self) -> int:
        return self.read_transaction(lambda s: s.execute(select(func.count()).select_from(Mention)).scalar_one())

    # -- predictions ---------------------------------------------------------------------------

    def _insert_prediction(
        self,
        s: Session,
        mention: Mention | Row,
        model_version: str,
        cands: list[CandidateInput],
        *,
        created_at: datetime | None = None,
        uid: str | None = None,
        field: str = "candidates",
    ) -> Prediction:
        known = set(s.scalars(select(KbEntity.id).where(KbEntity.id.in_([c.entity_id for c in cands]))))
        for i, c in enumerate(cands):
            if c.entity_id not in known:
                raise UnknownEntity(
                    f"unknown entity {c.entity_id!r} (not in the knowledge base)", f"{field}[{i}].entity_id"
                )
        mv = self._model_version_row(s, model_version, create=True)
        margin = cands[0].s - cands[1].s if len(cands) >= 2 else None
        now = created_at or utcnow()
        pred = Prediction(
            uid=uid or uuid.uuid4().hex, mention_id=mention.id, model_version_id=mv.id, margin=margin, created_at=now
        )
        s.add(pred)
        s.flush()
        s.add_all(
            [
                PredictionCandidate(
                    prediction_id=pred.id, rank=r, entity_id=c.entity_id, s=c.s, s_t=c.s_t, s_v=c.s_v, s_c=c.s_c
                )
                for r, c in enumerate(cands)
            ]
        )
        # The queue orders by the margin of the *latest* prediction; keep the cached copy in step.
        latest = self._latest_prediction(s, mention.id)
        s.execute(Q.set_margin(), {"mid": mention.id, "margin": latest.margin if latest is not None else margin})
        return pred

    def add_prediction(
        self, mention: int | str, model_version: str, candidates: list, *, created_at: datetime | None = None
    ) -> PredictionRecord:
        """Store a model's ranked candidates for a mention; the model version is created if new.

        Candidates are ranked by S (highest first). The mention's queue priority becomes the margin
        between the top two S of its latest prediction."""
        cands = check_candidates(candidates)
        if not cands:
            raise InvalidInput("a prediction needs at least one candidate", "candidates")

        def fn(s: Session, events: list) -> PredictionRecord:
            m = self._mention_row(s, mention)
            pred = self._insert_prediction(s, m, model_version, cands, created_at=created_at)
            return self._prediction_record(s, pred)

        return self._write(fn)

    def predictions(self, mention: int | str) -> list[PredictionRecord]:
        """All predictions for a mention, newest first."""

        def fn(s: Session) -> list[PredictionRecord]:
            m = self._mention_row(s, mention)
            rows = s.scalars(
                select(Prediction)
                .where(Prediction.mention_id == m.id)
                .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            ).all()
            return [self._prediction_record(s, p) for p in rows]

        return self.read_transaction(fn)

    def add_predictions(self, items: list[tuple[int | str, list]], model_version: str) -> int:
        """Store many predictions (mention id or uid, candidates) in one transaction: pre-annotation
        writes a chunk at a time, so the write lock is held for one short transaction per chunk.
        Items without candidates are skipped. Returns how many were stored."""
        checked = [(m, check_candidates(c, f"predictions[{i}].candidates")) for i, (m, c) in enumerate(items)]

        def fn(s: Session, events: list) -> int:
            n = 0
            for i, (mention, cands) in enumerate(checked):
                if cands:
                    row = self._mention_row(s, mention, f"predictions[{i}].mention")
                    self._insert_prediction(s, row, model_version, cands, field=f"predictions[{i}].candidates")
                    n += 1
            return n

        return self._write(fn)
