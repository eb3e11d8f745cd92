"""Annotators and the knowledge base (entities with versioned edits)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Row, case, func, insert, select, text, update
from sqlalchemy.orm import Session

from mimic.data.schema import Entity, KnowledgeBase

from ._base import MAX_NAME, MAX_SENTENCE, StoreBase, check_choice, check_text
from .errors import InvalidImage, InvalidInput
from .models import ROLES, Annotator, KbEntity, KbEntityVersion, entity_search_text, utcnow
from .records import AnnotatorRecord, EntityRecord, EntityVersionRecord

_MAX_TEXT = 200_000
# The note migration 0002 leaves on the version that dropped an entity's outside image paths.
DROPPED_IMAGES = "security: dropped image paths outside DATA_DIR/images"
# Full-text search (migration 0003): the SQLite FTS5 table; on PostgreSQL the stored generated
# tsvector column, with the GIN index ix_kb_entities_fulltext. Neither is in the models.
FTS_TABLE = "kb_entities_fts"
PG_SEARCH_VECTOR = "search_vector"
_MAX_WORDS = 32  # words of a query that count (a pasted paragraph is not a search)
RANK_MAX = 10_000  # word matches ranked by relevance up to this many; beyond, in KB order


def _annotator_record(a: Annotator | Row) -> AnnotatorRecord:
    return AnnotatorRecord(id=a.id, name=a.name, role=a.role, active=a.active, created_at=a.created_at)


def _str_list(value: Any, field: str, max_len: int = MAX_SENTENCE) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidInput(f"expected a list of strings, got {type(value).__name__}", field)
    return [check_text(v, f"{field}[{i}]", max_len=max_len) for i, v in enumerate(value)]


def _like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` literally anywhere (%, _ and the escape char escaped)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class KbMixin(StoreBase):
    _fts_table: bool | None = None  # does migration 0003's FTS5 table exist? (asked once)

    # -- entity images: only by content ------------------------------------------------------

    def store_entity_images(
        self, images: Iterable[str], *, entity_id: str | None = None, errors: list | None = None
    ) -> list[str]:
        """Entity images as the database holds them: DATA_DIR-relative paths into the content-
        addressed image store. A path that already names a file of the store is kept; any other
        file is validated and copied in by content; what is not a readable image is dropped (and
        reported in `errors` as {"id", "image", "reason"} when a list is given). The caller decides
        which files may be read (the app confines KB files to their own folder)."""
        out: list[str] = []
        for p in images:
            name = p if isinstance(p, str) else str(p)
            inside = self.resolve_data_path(name)
            try:
                if inside is not None and Path(inside).is_file():
                    rel = self.store_relative(inside)
                else:
                    if inside is None and not Path(name).is_absolute():
                        raise InvalidImage(f"{name!r} is not a file of the image store", "images")
                    rel = self.store_relative(self.images.put(name, "images").path)
            except (InvalidImage, OSError, ValueError) as exc:
                if errors is not None:
                    errors.append({"id": entity_id, "image": name, "reason": str(exc)})
                continue
            if rel not in out:
                out.append(rel)
        return out

    def entities_with_dropped_images(self) -> list[str]:
        """Ids of the entities whose current version is migration 0002's repair (image paths
        outside DATA_DIR/images dropped), so an operator's KB file can give their images back."""

        def fn(s: Session) -> list[str]:
            current = (KbEntityVersion.entity_id == KbEntity.id) & (KbEntityVersion.version == KbEntity.version)
            q = (
                select(KbEntity.id)
                .join(KbEntityVersion, current)
                .where(KbEntityVersion.note.like(DROPPED_IMAGES + "%"))
            )
            return list(s.scalars(q.order_by(KbEntity.id)))

        return self.read_transaction(fn)

    # -- annotators ----------------------------------------------------------------------------

    def add_annotator(self, name: str, role: str = "annotator") -> AnnotatorRecord:
        """Create an annotator, or return the existing one (changing its role if it differs)."""
        check_text(name, "name", max_len=MAX_NAME)
        if name != name.strip():
            raise InvalidInput("must not start or end with spaces", "name")
        check_choice(role, "role", ROLES)

        def fn(s: Session, events: list) -> AnnotatorRecord:
            row = s.scalar(select(Annotator).where(Annotator.name == name))
            if row is None:
                row = Annotator(name=name, role=role, active=True, created_at=utcnow())
                s.add(row)
                s.flush()
            elif row.role != role:
                row.role = role
            return _annotator_record(row)

        return self._write(fn)

    def get_annotator(self, name: str) -> AnnotatorRecord:
        return self.read_transaction(lambda s: _annotator_record(self._annotator_row(s, name, "name")))

    def list_annotators(self) -> list[AnnotatorRecord]:
        return self.read_transaction(
            lambda s: [_annotator_record(a) for a in s.scalars(select(Annotator).order_by(Annotator.id))]
        )

    # -- entities ------------------------------------------------------------------------------

    def _entity_record(self, s: Session, e: KbEntity | Row) -> EntityRecord:
        author = s.get_one(Annotator, e.updated_by).name if e.updated_by else None
        return EntityRecord(
            id=e.id,
            name=e.name,
            text=e.text,
            aliases=list(e.aliases or []),
            images=list(e.images or []),
            version=e.version,
            updated_at=e.updated_at,
            updated_by=author,
        )

    def upsert_entity(
        self,
        entity_id: str,
        name: str,
        text: str = "",
        aliases: Iterable[str] = (),
        images: Iterable[str] = (),
        *,
        author: str | None = None,
        note: str | None = None,
        image_errors: list | None = None,
    ) -> EntityRecord:
        """Create or edit one entity. An edit that changes something bumps the version and keeps
        the full previous state in `entity_history`; an edit that changes nothing stores nothing.
        Images are stored by content (`store_entity_images`); unreadable ones are dropped."""
        check_text(entity_id, "entity_id", max_len=MAX_NAME)
        check_text(name, "name", max_len=MAX_SENTENCE)
        check_text(text, "text", max_len=_MAX_TEXT, allow_empty=True)
        aliases = _str_list(list(aliases), "aliases")
        images = self.store_entity_images(
            _str_list(list(images), "images", max_len=4096), entity_id=entity_id, errors=image_errors
        )
        if note is not None:
            check_text(note, "note", max_len=MAX_SENTENCE, allow_empty=True)

        def fn(s: Session, events: list) -> EntityRecord:
            author_id = self._annotator_row(s, author, "author").id if author is not None else None
            now = utcnow()
            row = s.get(KbEntity, entity_id)
            if row is None:
                row = KbEntity(
                    id=entity_id,
                    name=name,
                    text=text,
                    aliases=aliases,
                    images=images,
                    version=1,
                    updated_at=now,
                    updated_by=author_id,
                    search_text=entity_search_text(entity_id, name, aliases),
                )
                s.add(row)
            elif (row.name, row.text, list(row.aliases or []), list(row.images or [])) == (name, text, aliases, images):
                return self._entity_record(s, row)
            else:
                row.version += 1
                row.name, row.text, row.aliases, row.images = name, text, aliases, images
                row.updated_at, row.updated_by = now, author_id
                row.search_text = entity_search_text(entity_id, name, aliases)
            s.flush()
            s.add(
                KbEntityVersion(
                    entity_id=entity_id,
                    version=row.version,
                    name=name,
                    text=text,
                    aliases=aliases,
                    images=images,
                    author_id=author_id,
                    note=note,
                    created_at=now,
                )
            )
            return self._entity_record(s, row)

        return self._write(fn)

    def import_kb(
        self,
        kb: Iterable[Entity],
        *,
        author: str | None = None,
        chunk_size: int = 1000,
        image_errors: list | None = None,
        on_chunk: Callable[[list[Entity], dict[str, int]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, int]:
        """Bulk-load entities (a `mimic.data.schema.KnowledgeBase`, a list, or a stream such as
        `mimic.data.kb_files.open_kb`'s) with Core inserts (fast for 100k entities).

        New entities get version 1; an existing entity whose name/text/aliases/images differ gets a
        new version; identical ones are left alone. Images are copied into the content-addressed
        image store and the database holds only store-relative paths (`store_entity_images`; images
        that cannot be stored are dropped and listed in `image_errors` when given). Returns
        {"created", "updated", "unchanged"}.

        The entities are read `chunk_size` at a time and each chunk is its own short write
        transaction, so other writers (annotations) get the database between chunks and memory is
        bounded by a chunk. `on_chunk(entities as stored, totals so far)` runs after each commit;
        `should_stop()` is asked before each chunk (True: stop there; committed chunks stay). A
        list or KnowledgeBase is checked whole before anything is written; a stream chunk by chunk.
        """
        if isinstance(kb, (list, tuple, KnowledgeBase)):
            for i, e in enumerate(kb):
                check_text(e.id, f"kb[{i}].id", max_len=MAX_NAME)
                check_text(e.name, f"kb[{i}].name", max_len=MAX_SENTENCE)
        totals = {"created": 0, "updated": 0, "unchanged": 0}
        source = iter(kb)
        position = 0
        while not (should_stop is not None and should_stop()):
            raw = list(islice(source, chunk_size))
            if not raw:
                break
            chunk = []
            for e in raw:
                check_text(e.id, f"kb[{position}].id", max_len=MAX_NAME)
                check_text(e.name, f"kb[{position}].name", max_len=MAX_SENTENCE)
                position += 1
                images = self.store_entity_images(e.images, entity_id=e.id, errors=image_errors)
                chunk.append(Entity(e.id, e.name, e.text, list(e.aliases), images))

            def fn(s: Session, events: list, chunk=chunk) -> dict[str, int]:
                # counts are returned, not accumulated here: a retried transaction must not count twice
                counts = {"created": 0, "updated": 0, "unchanged": 0}
                author_id = self._annotator_row(s, author, "author").id if author is not None else None
                now = utcnow()
                ids = [e.id for e in chunk]
                existing = {
                    r.id: r
                    for r in s.execute(
                        select(
                            KbEntity.id,
                            KbEntity.name,
                            KbEntity.text,
                            KbEntity.aliases,
                            KbEntity.images,
                            KbEntity.version,
                        ).where(KbEntity.id.in_(ids))
                    )
                }
                new_rows, new_versions = [], []
                for e in chunk:
                    rec = dict(name=e.name, text=e.text or "", aliases=list(e.aliases), images=list(e.images))
                    old = existing.get(e.id)
                    if old is None:
                        new_rows.append(
                            dict(
                                id=e.id,
                                version=1,
                                updated_at=now,
                                updated_by=author_id,
                                search_text=entity_search_text(e.id, e.name, e.aliases),
                                **rec,
                            )
                        )
                        new_versions.append(
                            dict(entity_id=e.id, version=1, author_id=author_id, created_at=now, note="import", **rec)
                        )
                        counts["created"] += 1
                    elif (old.name, old.text, list(old.aliases or []), list(old.images or [])) == (
                        rec["name"],
                        rec["text"],
                        rec["aliases"],
                        rec["images"],
                    ):
                        counts["unchanged"] += 1
                    else:
                        v = old.version + 1
                        s.execute(
                            update(KbEntity)
                            .where(KbEntity.id == e.id)
                            .values(
                                version=v,
                                updated_at=now,
                                updated_by=author_id,
                                search_text=entity_search_text(e.id, e.name, e.aliases),
                                **rec,
                            )
                        )
                        new_versions.append(
                            dict(entity_id=e.id, version=v, author_id=author_id, created_at=now, note="import", **rec)
                        )
                        counts["updated"] += 1
                if new_rows:
                    s.execute(insert(KbEntity), new_rows)
                if new_versions:
                    s.execute(insert(KbEntityVersion), new_versions)
                return counts

            for k, v in self._write(fn).items():
                totals[k] += v
            if on_chunk is not None:
                on_chunk(chunk, dict(totals))
        return totals

    def get_entity(self, entity_id: str) -> EntityRecord:
        return self.read_transaction(lambda s: self._entity_record(s, self._entity_row(s, entity_id)))

    def entity_history(self, entity_id: str) -> list[EntityVersionRecord]:
        """Every version of an entity, oldest first."""

        def fn(s: Session) -> list[EntityVersionRecord]:
            self._entity_row(s, entity_id)
            rows = s.execute(
                select(KbEntityVersion, Annotator.name)
                .outerjoin(Annotator, Annotator.id == KbEntityVersion.author_id)
                .where(KbEntityVersion.entity_id == entity_id)
                .order_by(KbEntityVersion.version)
            ).all()
            return [
                EntityVersionRecord(
                    entity_id=v.entity_id,
                    version=v.version,
                    name=v.name,
                    text=v.text,
                    aliases=list(v.aliases or []),
                    images=list(v.images or []),
                    author=author,
                    note=v.note,
                    created_at=v.created_at,
                )
                for v, author in rows
            ]

        return self.read_transaction(fn)

    def _entity_columns(self, text_chars: int | None) -> list:
        """The columns of an EntityRecord; the text cut to `text_chars` + 1 characters in SQL when
        given (the caller marks the cut), so a page of results never carries whole descriptions."""
        text = KbEntity.text if text_chars is None else func.substr(KbEntity.text, 1, text_chars + 1).label("text")
        return [
            KbEntity.id,
            KbEntity.name,
            text,
            KbEntity.aliases,
            KbEntity.images,
            KbEntity.version,
            KbEntity.updated_at,
            KbEntity.updated_by,
        ]

    def _page_records(self, s: Session, rows, text_chars: int | None) -> list[EntityRecord]:
        out = []
        for r in rows:
            rec = self._entity_record(s, r)
            if text_chars is not None and len(rec.text) > text_chars:
                rec = replace(rec, text=rec.text[:text_chars] + "…")
            out.append(rec)
        return out

    @staticmethod
    def _check_page(offset: int, limit: int) -> None:
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"must be between 1 and 1000, got {limit}", "limit")
        if offset < 0:
            raise InvalidInput(f"must not be negative, got {offset}", "offset")

    def search_entities(
        self, query: str, limit: int = 20, *, offset: int = 0, text_chars: int | None = None
    ) -> list[EntityRecord]:
        """Entities matching `query`, best first: first those with the query inside their id, name
        or an alias (case-insensitive substring): exact id or name, then name prefix, then the
        rest, each group by name; then those with every word of the query among the words of
        their names, aliases and description (full text, stemmed: "animals" finds "animal"), by
        relevance (BM25 on SQLite FTS5, ts_rank on PostgreSQL; a word of a name or alias weighs
        more than one of the description). A word in more than RANK_MAX entities is not worth
        ranking (nor cheap to rank): such matches follow in KB order. One page: `limit` (at most
        1000) from `offset`; `text_chars`: descriptions cut to that many characters (+ "…")."""
        check_text(query, "query", max_len=MAX_NAME)
        self._check_page(offset, limit)
        q = query.strip().lower()
        pattern = _like_pattern(q)
        words = re.findall(r"\w+", q)[:_MAX_WORDS]
        full_text = self.full_text_backend()
        want = offset + limit

        def fn(s: Session) -> list[EntityRecord]:
            name = func.lower(KbEntity.name)
            group = case(
                (func.lower(KbEntity.id) == q, 0),
                (name == q, 0),
                (name.like(pattern[1:], escape="\\"), 1),
                else_=2,
            )
            ids = list(
                s.scalars(
                    select(KbEntity.id)
                    .where(KbEntity.search_text.like(pattern, escape="\\"))
                    .order_by(group, KbEntity.name, KbEntity.id)
                    .limit(want)
                )
            )
            if len(ids) < want and words:  # the page reaches past the substring matches
                seen = set(ids)
                more = self._word_matches(s, full_text, q, pattern, words, want)
                ids += [i for i in more if i not in seen][: want - len(ids)]
            page = ids[offset:want]
            found = {r.id: r for r in s.execute(select(*self._entity_columns(text_chars)).where(KbEntity.id.in_(page)))}
            return self._page_records(s, [found[i] for i in page if i in found], text_chars)

        return self.read_transaction(fn)

    @staticmethod
    def _word_matches(s: Session, full_text: str | None, q: str, pattern: str, words: list[str], n: int) -> list[str]:
        """Ids of at most `n` entities with every word of the query, best first (see search_entities)."""
        cap = {"cap": RANK_MAX + 1}
        if full_text == "fts5":
            match = {"m": " ".join(f'"{w}"' for w in words)}  # quoted: no FTS5 syntax from the user
            hits = s.execute(
                text(f"SELECT count(*) FROM (SELECT 1 FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :m LIMIT :cap)"),
                match | cap,
            ).scalar_one()
            key = f"bm25({FTS_TABLE}, 4.0, 1.0)" if hits <= RANK_MAX else "rowid"
            sql = (
                f"SELECT e.id FROM (SELECT rowid AS r, {key} AS k FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :m "
                "ORDER BY k LIMIT :n) AS f JOIN kb_entities AS e ON e.rowid = f.r ORDER BY f.k"
            )
            return list(s.scalars(text(sql), match | {"n": n}))
        if full_text == "postgresql":
            matched = f"{PG_SEARCH_VECTOR} @@ plainto_tsquery('english'::regconfig, :q)"  # served by the GIN index
            hits = s.execute(
                text(f"SELECT count(*) FROM (SELECT 1 FROM kb_entities WHERE {matched} LIMIT :cap) AS x"),
                {"q": q} | cap,
            ).scalar_one()
            order = (
                f"ts_rank({PG_SEARCH_VECTOR}, plainto_tsquery('english'::regconfig, :q)) DESC, id"
                if hits <= RANK_MAX
                else "id"
            )
            return list(
                s.scalars(
                    text(f"SELECT id FROM kb_entities WHERE {matched} ORDER BY {order} LIMIT :n"), {"q": q, "n": n}
                )
            )
        # a SQLite without FTS5: the query as a substring of the description
        return list(
            s.scalars(
                select(KbEntity.id)
                .where(func.lower(KbEntity.text).like(pattern, escape="\\"))
                .order_by(KbEntity.name, KbEntity.id)
                .limit(n)
            )
        )

    def full_text_backend(self) -> str | None:
        """How this database indexes words: "fts5" (SQLite with migration 0003's table),
        "postgresql", or None (a SQLite without FTS5: descriptions are matched as substrings)."""
        if self.engine.dialect.name == "postgresql":
            return "postgresql"
        if not self.is_sqlite:
            return None
        if self._fts_table is None:
            found = self.read_transaction(
                lambda s: s.execute(
                    text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": FTS_TABLE}
                ).first()
            )
            self._fts_table = found is not None
        return "fts5" if self._fts_table else None

    def rebuild_search_index(self) -> int:
        """Re-index every entity's words from kb_entities (SQLite FTS5; after a manual VACUUM, or
        to repair). PostgreSQL's index follows the table by itself. Returns the number of entities."""
        n = self.count_entities()
        if self.full_text_backend() == "fts5":
            self._write(lambda s, events: s.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')")))
        return n

    def list_entities(self, offset: int = 0, limit: int = 50, *, text_chars: int | None = None) -> list[EntityRecord]:
        """A page of entities ordered by name then id (for browsing the KB); `text_chars` as in
        `search_entities`."""
        self._check_page(offset, limit)

        def fn(s: Session) -> list[EntityRecord]:
            rows = s.execute(
                select(*self._entity_columns(text_chars))
                .order_by(KbEntity.name, KbEntity.id)
                .offset(offset)
                .limit(limit)
            ).all()
            return self._page_records(s, rows, text_chars)

        return self.read_transaction(fn)

    def count_entities(self) -> int:
        return self.read_transaction(lambda s: s.execute(select(func.count()).select_from(KbEntity)).scalar_one())

    def entities_by_id(self, ids: Iterable[str]) -> list[Entity]:
        """The current versions of these entities (those that exist), in the order asked, image paths
        as `knowledge_base` gives them; read 500 ids per query."""
        ids = list(dict.fromkeys(ids))

        def fn(s: Session) -> list[Entity]:
            found = {}
            for i in range(0, len(ids), 500):
                q = select(KbEntity.id, KbEntity.name, KbEntity.text, KbEntity.aliases, KbEntity.images)
                for r in s.execute(q.where(KbEntity.id.in_(ids[i : i + 500]))):
                    found[r.id] = Entity(
                        r.id,
                        r.name,
                        r.text or "",
                        list(r.aliases or []),
                        [q for q in map(self.resolve_data_path, r.images or []) if q is not None],
                    )
            return [found[i] for i in ids if i in found]

        return self.read_transaction(fn)

    def knowledge_base(self) -> KnowledgeBase:
        """The current entities as a `mimic.data.schema.KnowledgeBase` (ordered by id; image paths
        absolute, only those inside DATA_DIR/images: any other stored path is never followed)."""

        def fn(s: Session) -> KnowledgeBase:
            rows = s.execute(
                select(KbEntity.id, KbEntity.name, KbEntity.text, KbEntity.aliases, KbEntity.images).order_by(
                    KbEntity.id
                )
            ).all()
            return KnowledgeBase(
                [
                    Entity(
                        id=r.id,
                        name=r.name,
                        text=r.text or "",
                        aliases=list(r.aliases or []),
                        images=[q for q in map(self.resolve_data_path, r.images or []) if q is not None],
                    )
                    for r in rows
                ]
            )

        return self.read_transaction(fn)
