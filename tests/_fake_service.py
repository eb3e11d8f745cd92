"""A stand-in for `mimic.serving.service.LinkingService` in fast app tests: it records what would be
indexed and serves nothing, so an `AppContext` can be built over a real store in a fraction of a second."""

from __future__ import annotations

import threading
import time

from mimic.serving.service import ServedModel


class FakeService:
    def __init__(self, n: int = 0):
        self.indexed: list[str] = []  # ids handed to upsert_entities, in order
        self.entities: dict = {}  # id -> the Entity last handed over
        self.calls = 0
        self.lock = threading.Lock()
        self.n = n
        self.served = ServedModel("fake-v1", "zero-shot", "fake", "fake", None, "", "fake", time.time())

    def upsert_entities(self, entities, progress: bool = False) -> int:
        with self.lock:
            self.calls += 1
            self.indexed += [e.id for e in entities]
            self.entities.update({e.id: e for e in entities})
        return len(entities)

    def __len__(self) -> int:
        return self.n + len(self.indexed)

    def describe(self) -> dict:
        s = self.served
        return {
            "version": s.version,
            "scoring": s.scoring,
            "backbone": s.backbone,
            "model_type": s.model_type,
            "checkpoint": None,
            "index": "",
            "fingerprint": s.fingerprint,
            "entities": len(self),
            "nil_threshold": None,
        }
