"""`AppContext`: what one app process holds (config, annotation store, linking service, examples),
and how it starts: open the store, load the KB into an empty database, start the linking service
(building the index on the first start), and fill an empty annotation queue with the examples.

`AppContext.start(background=True)` (what `app/launch.py` uses) opens the store and returns at once
(except on a first start, whose annotation queue is seeded with the model's predictions);
the KB, the model and its index load in a thread while the UI is built and the server starts
answering (the model is most of a restart: transformers' imports, the checkpoint, the retrievers).
`ctx.service` waits for that load (up to MODEL_WAIT_SECONDS), so a link, an Inspect or anything else
needing the model that arrives early is answered once the model is ready, never with an error; past
the wait it gets `ModelLoading`, a message saying so. A load that fails is re-raised to every caller
(`ModelLoadFailed`) and handed to `on_failure` (app/launch.py exits: a supervisor restarts the app).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from db import AnnotationStore, open_store
from db.import_manifest import ImportManifests
from mimic.data.jsonl import load_jsonl_dataset
from mimic.data.kb_files import load_kb
from mimic.data.schema import Entity, KnowledgeBase, Mention
from mimic.serving.linker import LinkInputError
from mimic.serving.service import LinkingService
from retraining import RetrainConfig, maybe_start_retrain

from .config import REPO, AppConfig
from .jobs import JobRegistry

log = logging.getLogger("mimic.app")


class WriteDenied(PermissionError):
    """The visitor may not write (not signed in, or the deployment does not allow it)."""


# How long a request that needs the model waits for a background start to finish before it is
# answered "the model is still loading" (a restart loads in 5-20 s; a first start also builds the index).
MODEL_WAIT_SECONDS = 120.0


class ModelLoading(LinkInputError):
    """The model is still loading (a request arrived early in the start and waited MODEL_WAIT_SECONDS).
    A `LinkInputError`, so the tabs' `user_errors` show its message as it is."""


class ModelLoadFailed(LinkInputError):
    """The background start failed; the message says why (the server log has the traceback)."""


ASSETS = REPO / "assets"


def _inside(path: Path, root: Path) -> bool:
    root = root.resolve()
    return path == root or root in path.parents


def resolve_image(path: str | None, data_dir: Path) -> str | None:
    """The file behind a stored or served image path, or None: only files under DATA_DIR/images
    (the content-addressed store; stored paths are relative to DATA_DIR) and the repository's
    assets/ are ever handed to a component. Anything else (an absolute path elsewhere, a `..`
    escape, a symlink leading out, a missing file) gives None and the caller drops the image."""
    if not path or not isinstance(path, str) or "\x00" in path:
        return None
    p = Path(path)
    images = Path(data_dir).resolve() / "images"
    candidates = [p] if p.is_absolute() else [Path(data_dir) / p, REPO / p]
    for c in candidates:
        try:
            r = c.resolve()
        except (OSError, RuntimeError):
            continue
        if (_inside(r, images) or _inside(r, ASSETS)) and r.is_file():
            return str(r)
    return None


def resolve_images(paths, data_dir: Path) -> list[str]:
    """`resolve_image` over a list, dropping what may not be served."""
    return [r for r in (resolve_image(p, data_dir) for p in paths or []) if r is not None]


def browser_paths(config: AppConfig, store_settings=None) -> tuple[list[str], list[str]]:
    """(allowed_paths, blocked_paths) for `launch()`: a browser may fetch files under DATA_DIR/images
    and assets/ (plus Gradio's own upload/cache folders, which Gradio always allows); DATA_DIR's
    database, WAL/SHM, journal, indexes and everything else in it, and the source tree, are blocked
    (Gradio's blocklist wins over every allowance, including the cwd/temp rule for returned files)."""
    data = Path(config.data_dir).resolve()
    images = data / "images"
    allowed = [str(images), str(ASSETS.resolve())]
    blocked: set[str] = set()
    for name in (
        "annotations.db",
        "annotations.db-wal",
        "annotations.db-shm",
        "annotations.db-journal",
        "journal",
        "indexes",
        "imports",
        "analysis",
        "retrain",
        "runs",
        "models",
    ):
        blocked.add(str(data / name))
    if store_settings is not None:
        for attr in ("sqlite_path", "journal_path"):
            v = getattr(store_settings, attr, None)
            if v:
                v = Path(v).resolve()
                blocked.update({str(v), str(v) + "-wal", str(v) + "-shm", str(v) + "-journal"})
    if data.is_dir():
        for child in data.iterdir():
            if child.name != "images":
                blocked.add(str(child.resolve()))
    repo = REPO.resolve()
    for child in repo.iterdir():
        c = child.resolve()
        if child.name == "assets" or _inside(data, c) or _inside(images, c):
            continue
        blocked.add(str(c))
    return allowed, sorted(blocked)


@dataclass
class AppContext:
    config: AppConfig
    store: AnnotationStore
    _service: LinkingService | None = None  # `service`: set once the model has loaded
    examples: list[Mention] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    startup_seconds: dict = field(default_factory=dict)
    kb_lock: threading.Lock = field(default_factory=threading.Lock)
    # held while checking for a queued run and starting one, so a double click never queues two
    retrain_start_lock: threading.Lock = field(default_factory=threading.Lock)
    # analysis records by run file, read once per process (the Analysis tab's filters re-read them often)
    analysis_records: dict[str, list] = field(default_factory=dict)
    # background jobs (KB imports): threads of this process, polled by the UI (app/jobs.py)
    jobs: JobRegistry = field(default_factory=JobRegistry)
    _swap_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)  # set when the load ended (or failed)
    _load_error: BaseException | None = None
    wait_seconds: float = MODEL_WAIT_SECONDS
    _loader: threading.Thread | None = None  # a background start's load, until `begin_loading`
    # resumable KB imports (db/import_manifest.py): set in __post_init__; the files being imported now
    kb_imports: ImportManifests = field(init=False)
    kb_imports_running: set[str] = field(default_factory=set)
    kb_import_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.kb_imports = ImportManifests(Path(self.config.data_dir) / "imports")

    # -- start ---------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        config: AppConfig | None = None,
        *,
        progress: bool = True,
        model=None,
        background: bool = False,
        on_ready: Callable[[AppContext], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> AppContext:
        """Open the store; then load the KB, the model and its index, and seed an empty queue, in
        this thread (default) or in a background one (`background=True`: returns at once and the
        load starts with `begin_loading()`, or at the first wait on `service`). `on_ready(ctx)` runs
        once the model serves, `on_failure(exc)` when a background load fails (a foreground one raises)."""
        config = config or AppConfig.from_env()
        t0 = time.perf_counter()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(config.data_dir)
        for u in config.users:  # MIMIC_USERS bootstraps (the first admin); then the database rules
            store.ensure_user(u.name, u.role)
        ctx = cls(config, store, None, _load_examples(config))
        ctx.startup_seconds = {"store": round(time.perf_counter() - t0, 3)}
        if background and store.count_mentions() == 0 and ctx.examples:
            # a first start: the annotation queue is seeded with the model's predictions, and an
            # empty queue must not be served as if it were the queue; the model loads first
            log.info("first start: the model loads before the server starts (the queue is seeded)")
            background = False
        if not background:
            ctx._load_model(t0, progress, model)
            if on_ready is not None:
                on_ready(ctx)
            return ctx

        def load() -> None:
            try:
                ctx._load_model(t0, progress, model)
            except BaseException as exc:  # handed to every caller of `service` and to on_failure
                log.exception("the model failed to load")
                ctx._load_error = exc
                ctx._ready.set()
                if on_failure is not None:
                    on_failure(exc)
                return
            if on_ready is not None:
                on_ready(ctx)

        ctx._loader = threading.Thread(target=load, name="mimic-model-load", daemon=True)
        return ctx

    def begin_loading(self) -> threading.Thread | None:
        """Start a background start's load (`start(background=True)`) if it has not started; the
        caller picks the moment (app/launch.py: once the server answers, so that the page is not
        slowed by the load sharing the interpreter). Returns the loading thread (None: nothing to load)."""
        t = self._loader
        if t is not None and t.ident is None:
            t.start()
        return t

    def _load_model(self, t0: float, progress: bool, model) -> None:
        """The KB into an empty database, the linking service (index built on a first start), the
        served version registered, an empty queue seeded; then `service` serves."""
        store, config = self.store, self.config
        t1 = time.perf_counter()
        if store.count_entities() == 0:
            _seed_kb(store, config)
        elif flagged := store.entities_with_dropped_images():
            _restore_dropped_images(store, config, flagged)
        kb = knowledge_base(store, config.data_dir)
        t2 = time.perf_counter()
        checkpoint, version, replaces_promoted = config.checkpoint, None, False
        if checkpoint is None and model is None:
            checkpoint, version, replaces_promoted = _unpinned_start(store, config)
        service = LinkingService.start(
            config.data_dir,
            kb,
            checkpoint=checkpoint,
            backbone=config.backbone,
            version=version,
            allowed_image_dirs=None,
            progress=progress,
            model=model,
            device=config.device,
            keep_model=config.keep_model,
        )
        t3 = time.perf_counter()
        s = service.served
        store.register_model_version(s.version, checkpoint=s.checkpoint, backbone=s.backbone)
        if store.promoted_model_version() is None or replaces_promoted:
            store.promote(s.version)  # record what serves, so there is a version to roll back to
        self._service = service
        if store.count_mentions() == 0 and self.examples:
            self.seed_queue(self.examples)
        self.startup_seconds.update(
            {
                "kb": round(t2 - t1, 3),
                "model+index": round(t3 - t2, 3),
                "total": round(time.perf_counter() - t0, 3),
            }
        )
        self._ready.set()
        log.info("app ready in %.1f s: %s", self.startup_seconds["total"], service.describe())

    @property
    def ready(self) -> bool:
        """True once the model serves (False while it loads, and after a failed load)."""
        return self._service is not None and self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> LinkingService:
        """The linking service, waiting up to `timeout` seconds (default `wait_seconds`) for a
        background start; `ModelLoading` past the wait, `ModelLoadFailed` after a failed load."""
        if not self._ready.is_set():
            self.begin_loading()  # nobody started it yet: a wait must not wait for nothing
            waited = time.perf_counter()
            self._ready.wait(self.wait_seconds if timeout is None else timeout)
            if not self._ready.is_set():
                raise ModelLoading(
                    f"the model is still loading (waited {time.perf_counter() - waited:.0f} s): try again in a moment"
                )
        if self._service is None:
            raise ModelLoadFailed(f"the model failed to load ({self._load_error!r}); see the server log")
        return self._service

    @property
    def service(self) -> LinkingService:
        """The linking service; while a background start loads it, this waits (`wait_ready`)."""
        svc = self._service
        return svc if svc is not None else self.wait_ready()

    def seed_queue(self, mentions: list[Mention]) -> int:
        """Store mentions with the serving model's predictions so the Annotate queue has work."""
        results = self.service.link_batch(
            [
                {
                    "sentence": m.sentence,
                    "mention": (m.start, m.end) if m.start is not None else m.mention,
                    "image": m.image,
                }
                for m in mentions
            ],
            top_k=self.config.top_k,
            explain=False,
        )
        records = []
        for m, r in zip(mentions, results):
            records.append(
                {
                    "uid": f"example:{m.id}",
                    "source": "examples",
                    "sentence": m.sentence,
                    "mention": r.mention,
                    "start": r.start,
                    "end": r.end,
                    "image": m.image,
                    "candidates": candidates_for_store(r.candidates),
                    "model_version": self.service.served.version,
                }
            )
        rep = self.store.import_mentions(records, base_dir=REPO, on_error="skip")
        if rep.errors:
            log.warning("example queue: %d record(s) rejected: %s", len(rep.errors), rep.errors[:3])
        return rep.created

    # -- identity ----------------------------------------------------------------------------------
    def annotator(self, username: str | None) -> str:
        """The name a write is stored under, or WriteDenied."""
        if username:
            role = next((u.role for u in self.config.users if u.name == username), "annotator")
            self.store.ensure_user(username, role)  # an existing user keeps the database's role
            return username
        if self.config.anonymous_writes:
            self.store.ensure_user("local", "admin")
            return "local"
        raise WriteDenied(
            "sign in to save: visitors who are not signed in can link but not write"
            + (" (use 'Sign in with Hugging Face')" if self.config.oauth else "")
        )

    def can_write(self, username: str | None) -> bool:
        return bool(username) or self.config.anonymous_writes

    def require(self, action: str, username: str | None) -> str:
        """The one permission check (app/permissions.py): the name the action runs under, or
        WriteDenied when the visitor is not signed in or their role may not do `action`."""
        roles = self.config.permissions.get(action)
        if roles is None:
            raise WriteDenied(f"unknown action {action!r}")
        name = self.annotator(username)
        user = self.store.get_annotator(name)
        role = user.role
        if not user.active:
            raise WriteDenied(f"{name} is disabled: an admin can enable the account again (Users tab)")
        if role not in roles:
            raise WriteDenied(
                f"{name} is {'an' if role[0] in 'aeiou' else 'a'} {role}: {action.replace('_', ' ')} "
                f"needs the role {' or '.join(roles)}"
            )
        return name

    # -- model versions: hot swap, rollback, retraining ------------------------------------------
    def follow_promotion(self) -> str | None:
        """Serve the promoted version if another one serves (a retraining run promoted it, or a
        rollback). The new model and its index load while the old one keeps serving; the switch is
        one assignment. Returns the new version, or None. MIMIC_CHECKPOINT pins the served model."""
        if self.config.checkpoint:
            return None
        mv = self.store.promoted_model_version()
        if mv is None or mv.name == self.service.served.version:
            return None
        if mv.checkpoint and not Path(mv.checkpoint).exists():
            log.error(
                "promoted version %s: checkpoint %s is missing; still serving %s",
                mv.name,
                mv.checkpoint,
                self.service.served.version,
            )
            return None
        if not self._swap_lock.acquire(blocking=False):  # a swap is already under way
            return None
        try:
            kb = knowledge_base(self.store, self.config.data_dir)
            log.info("loading model version %s (serving %s meanwhile)", mv.name, self.service.served.version)
            self.service.swap(kb, checkpoint=mv.checkpoint, version=mv.name, backbone=self.config.backbone)
            with self.kb_lock:  # KB edits made during the load
                self.service.sync_kb(knowledge_base(self.store, self.config.data_dir))
            log.info("now serving %s", mv.name)
            return mv.name
        finally:
            self._swap_lock.release()

    def serve_version(self, name: str, username: str | None) -> str | None:
        """Roll back (or forward) to a registered version: promote it and swap to it."""
        self.require("serve", username)
        self.store.promote(name)
        return self.follow_promotion()

    def retrain_config(self, **overrides):
        return RetrainConfig.from_env(
            data_dir=str(self.config.data_dir),
            backbone=self.config.backbone,
            checkpoint=self.config.checkpoint or _existing(self.config.default_checkpoint, warn=False),
            **overrides,
        )

    def start_watcher(self, interval: float) -> threading.Thread | None:
        """Background thread: follow promotions (hot swap) and start retraining when the policy in
        MIMIC_RETRAIN_MIN_NEW_ANNOTATIONS / MIMIC_RETRAIN_EVERY_HOURS says it is due (the job runs
        in its own process). interval <= 0: no thread."""
        if interval <= 0:
            return None

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.follow_promotion()
                    rcfg = self.retrain_config()
                    if rcfg.min_new_annotations or rcfg.every_hours:
                        proc, reason = maybe_start_retrain(rcfg, store=self.store)
                        if proc is not None:
                            log.info("retraining started (run %s): %s", getattr(proc, "run_id", "?"), reason)
                except Exception:
                    log.exception("model watcher")

        t = threading.Thread(target=loop, name="mimic-model-watcher", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    # -- KB ------------------------------------------------------------------------------------
    def save_entity(self, entity: Entity, author: str, note: str | None = None):
        """Store an entity (new version; its images by content in DATA_DIR/images) and update the
        served index without a rebuild. The caller checked the permission."""
        with self.kb_lock:
            rec = self.store.upsert_entity(
                entity.id, entity.name, entity.text, entity.aliases, entity.images, author=author, note=note
            )
            self.service.upsert_entities([replace(entity, images=resolve_images(rec.images, self.config.data_dir))])
        return rec


def _existing(checkpoint: str | None, warn: bool = True) -> str | None:
    """`checkpoint` if it is a folder, else None: a missing default checkpoint (a checkout without
    assets/models/) falls back to zero-shot, with a warning."""
    if checkpoint is None or Path(checkpoint).is_dir():
        return checkpoint
    if warn:
        log.warning("checkpoint %s is missing: ranking zero-shot instead", checkpoint)
    return None


def _unpinned_start(store: AnnotationStore, config: AppConfig) -> tuple[str | None, str | None, bool]:
    """What serves at start when MIMIC_CHECKPOINT pins nothing -> (checkpoint or None for zero-shot,
    version name or None, whether it replaces the promoted version).

    A restart keeps serving the promoted version. Otherwise the default checkpoint serves (None when
    MIMIC_CHECKPOINT=zero-shot or the backbone is not the offline one). A promoted zero-shot version
    is kept when an admin chose it (a rollback: other versions exist), but not when it is only what
    a data folder from before the default checkpoint registered at its first start (then it is the
    one version there is): the default checkpoint serves and is promoted in its place."""
    mv = store.promoted_model_version()
    if mv is not None and mv.checkpoint and Path(mv.checkpoint).exists():
        return mv.checkpoint, mv.name, False
    default = _existing(config.default_checkpoint)
    if mv is not None and not mv.checkpoint:
        if default is None or len(store.list_model_versions()) > 1:
            return None, None, False
        return default, None, True
    return default, None, False


def knowledge_base(store: AnnotationStore, data_dir: Path) -> KnowledgeBase:
    """The database's KB with image paths resolved (what the index encodes): only images inside
    DATA_DIR/images survive; a stored path elsewhere is dropped, never followed."""
    kb = store.knowledge_base()
    return KnowledgeBase([replace(e, images=resolve_images(e.images, data_dir)) for e in kb.entities])


def _seed_kb(store: AnnotationStore, config: AppConfig) -> None:
    """First start: the configured KB (the demo KB) into the database, its images copied into the
    image store by content (so exports carry them). MIMIC_KB is the operator's own setting, so its
    images may lie anywhere the operator points (a written-out dataset names absolute paths); KB
    files uploaded in the app are confined to their folder (`app.tabs.knowledge_base.import_kb_file`)."""
    kb, report = load_kb(config.kb_path, confine_images=False)
    log.info("first start: loading %s into the database (%s)", config.kb_path, report.summary())
    errors: list = []
    store.import_kb(kb, image_errors=errors)
    if errors:
        log.warning("KB images refused: %d (%s)", len(errors), errors[:3])


def _restore_dropped_images(store: AnnotationStore, config: AppConfig, flagged: list[str]) -> None:
    """A database from before images were stored by content held repository paths for the demo
    KB's images; migration 0002 dropped them (with every other path outside DATA_DIR/images). The
    configured KB file (the operator's own, like at first start) gives those entities their images
    back, copied in by content; names, descriptions and aliases edited since are kept."""
    kb, _ = load_kb(config.kb_path, confine_images=False)
    restored = 0
    for eid in flagged:
        source = kb[kb.position(eid)] if eid in kb else None
        if source is None or not source.images:
            continue
        rec = store.get_entity(eid)
        note = "images restored by content from the configured KB file (after migration 0002)"
        store.upsert_entity(eid, rec.name, rec.text, rec.aliases, source.images, note=note)
        restored += 1
    log.info("images restored for %d of %d entities flagged by migration 0002", restored, len(flagged))


def _load_examples(config: AppConfig) -> list[Mention]:
    p = config.examples_path
    if p is None or not Path(p).is_file():
        return []
    ds = load_jsonl_dataset(Path(p).parent)
    return ds.split(Path(p).stem)


def candidates_for_store(candidates) -> list[dict]:
    """Ranked candidates (`mimic.serving.linker.Candidate`s or their dicts) as the store's prediction input."""

    def get(c, k):
        return c[k] if isinstance(c, dict) else getattr(c, k)

    return [{k: get(c, k) for k in ("entity_id", "S", "S_T", "S_V", "S_C")} for c in candidates]
