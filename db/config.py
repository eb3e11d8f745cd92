"""Store settings (from the environment) and where the data physically lives.

Environment variables (all optional):

  DATA_DIR                   folder for the SQLite file, stored images and the journal (./data)
  DATABASE_URL               any SQLAlchemy URL; default sqlite:///$DATA_DIR/mimic_studio.sqlite3
  MIMIC_DB_NETWORK_FS        auto | 1 | 0 — is the SQLite file on a network / bucket mount?
                             auto reads the mount table. On a network FS SQLite must not use WAL
                             (shared-memory index + mmap over NFS/FUSE corrupts or SIGBUSes), so the
                             rollback journal is used with one connection per process.
  MIMIC_DB_JOURNAL_MODE      wal | delete | truncate | persist — overrides the choice above
  MIMIC_DB_BUSY_TIMEOUT_MS   how long a writer waits for the SQLite lock (10000)
  MIMIC_ANNOTATION_OVERLAP   how many annotators must decide each mention (1 = no double annotation)
  MIMIC_LEASE_SECONDS        how long a queue item stays reserved for the annotator it was given to (900)
  MIMIC_MAX_IMAGE_BYTES      largest accepted image file (20 MiB)
  MIMIC_MAX_IMAGE_PIXELS     largest accepted width*height (40 M)
  MIMIC_JOURNAL_FSYNC        1 | 0 — fsync the journal after each transaction (1)

`describe_location` answers "where does my data live, and will it survive a restart?": it
recognises a Hugging Face Space without a mounted storage bucket, temporary folders (/tmp, tmpfs)
and container overlay file systems, which all lose their content.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy.engine import make_url

from .errors import InvalidInput

DB_FILE_NAME = "mimic_studio.sqlite3"
JOURNAL_MODES = ("wal", "delete", "truncate", "persist")

# File systems on which SQLite's WAL (shared memory, mmap) and POSIX locks are unreliable.
_NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb",
    "smb2",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "afs",
    "beegfs",
    "davfs",
    "sshfs",
    "s3fs",
    "gcsfuse",
    "ossfs",
    "juicefs",
    "virtiofs",
}
# File systems whose content disappears with the machine / container.
_VOLATILE_FS = {"tmpfs", "ramfs"}
_OVERLAY_FS = {"overlay", "overlayfs", "aufs"}
_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def _env_bool(env: Mapping[str, str], key: str, default: bool | None) -> bool | None:
    raw = env.get(key)
    if raw is None or raw.strip() == "" or raw.strip().lower() == "auto":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"expected 1/0/true/false/auto, got {raw!r}", key)


def _env_int(env: Mapping[str, str], key: str, default: int, minimum: int) -> int:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"expected an integer, got {raw!r}", key) from None
    if value < minimum:
        raise InvalidInput(f"must be >= {minimum}, got {value}", key)
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the store needs to know about its environment. Build with `Settings.from_env`."""

    data_dir: Path
    database_url: str
    network_fs: bool | None = None  # None: detect from the mount table
    journal_mode: str | None = None  # None: "delete" on a network FS, else "wal"
    busy_timeout_ms: int = 10_000
    overlap: int = 1
    lease_seconds: int = 900
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    journal_fsync: bool = True
    write_retries: int = 8  # retries of a whole transaction on "database is locked"

    @classmethod
    def from_env(
        cls,
        data_dir: str | Path | None = None,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides,
    ) -> Settings:
        """Settings from `env` (default os.environ); explicit arguments win over the environment."""
        env = os.environ if env is None else env
        data = Path(data_dir if data_dir is not None else env.get("DATA_DIR") or "./data").expanduser().absolute()
        db_url = url or env.get("DATABASE_URL") or f"sqlite:///{data / DB_FILE_NAME}"
        mode = env.get("MIMIC_DB_JOURNAL_MODE") or None
        s = cls(
            data_dir=data,
            database_url=db_url,
            network_fs=_env_bool(env, "MIMIC_DB_NETWORK_FS", None),
            journal_mode=mode.strip().lower() if mode else None,
            busy_timeout_ms=_env_int(env, "MIMIC_DB_BUSY_TIMEOUT_MS", 10_000, 0),
            overlap=_env_int(env, "MIMIC_ANNOTATION_OVERLAP", 1, 1),
            lease_seconds=_env_int(env, "MIMIC_LEASE_SECONDS", 900, 1),
            max_image_bytes=_env_int(env, "MIMIC_MAX_IMAGE_BYTES", 20 * 1024 * 1024, 1),
            max_image_pixels=_env_int(env, "MIMIC_MAX_IMAGE_PIXELS", 40_000_000, 1),
            journal_fsync=bool(_env_bool(env, "MIMIC_JOURNAL_FSYNC", True)),
        )
        s = replace(s, **overrides) if overrides else s
        s.validate()
        return s

    def validate(self) -> None:
        if self.journal_mode is not None and self.journal_mode not in JOURNAL_MODES:
            raise InvalidInput(f"must be one of {JOURNAL_MODES}, got {self.journal_mode!r}", "MIMIC_DB_JOURNAL_MODE")
        if self.overlap < 1:
            raise InvalidInput(f"must be >= 1, got {self.overlap}", "overlap")
        if self.is_sqlite and self.sqlite_path is None:
            raise InvalidInput(
                "an in-memory SQLite database cannot be shared between connections; give a file path", "DATABASE_URL"
            )

    # -- derived locations ----------------------------------------------------------------------

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for another database (or an in-memory SQLite)."""
        u = make_url(self.database_url)
        if (
            u.get_backend_name() != "sqlite"
            or not u.database
            or u.database == ":memory:"
            or u.database.startswith("file::memory:")
        ):
            return None
        return Path(u.database).expanduser().absolute()

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal" / "annotations.jsonl"

    @property
    def safe_url(self) -> str:
        """The database URL with any password masked, for logs."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    def resolved_network_fs(self, mounts: list[Mount] | None = None) -> bool:
        """The MIMIC_DB_NETWORK_FS setting, or what the mount table says about the SQLite file."""
        if self.network_fs is not None:
            return self.network_fs
        path = self.sqlite_path
        if path is None:
            return False
        m = mount_of(path.parent, read_mounts() if mounts is None else mounts)
        return m is not None and is_network_fs(m.fstype)

    def resolved_journal_mode(self, mounts: list[Mount] | None = None) -> str:
        if self.journal_mode:
            return self.journal_mode
        return "delete" if self.resolved_network_fs(mounts) else "wal"


# ------------------------------------------------------------------------------------------------
# Mount table and the "is it durable?" report
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str = ""


def _unescape(s: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def read_mounts(path: str = "/proc/self/mounts") -> list[Mount]:
    """The mount table (Linux); empty where it cannot be read (macOS, Windows, sandboxes)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(mount_point=_unescape(parts[1]), fstype=parts[2], source=_unescape(parts[0])))
    return mounts


def mount_of(path: str | Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path` (the longest matching mount point; the last one mounted wins)."""
    real = os.path.realpath(Path(path).absolute())  # resolves symlinks in the existing part only
    best, best_len = None, -1
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if mp == "/" or real == mp or real.startswith(mp + "/"):
            if len(mp) >= best_len:
                best, best_len = m, len(mp)
    return best


def is_network_fs(fstype: str) -> bool:
    t = fstype.lower()
    if t in _NETWORK_FS:
        return True
    # FUSE mounts (hf-mount, s3fs, gcsfuse, sshfs ...) are remote storage; fuseblk is a local disk.
    return t.startswith("fuse") and t != "fuseblk"


@dataclass
class StorageReport:
    """Where each piece of data lives and whether it survives a restart."""

    data_dir: str
    database: str
    journal: str
    images: str
    mount_point: str | None
    fstype: str | None
    network_fs: bool
    journal_mode: str | None  # SQLite only
    ephemeral: bool
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        where = f"{self.data_dir}"
        if self.fstype:
            where += f" ({self.fstype} at {self.mount_point})"
        text = f"data lives in {where}; database {self.database}"
        if self.journal_mode:
            text += f" (SQLite journal_mode={self.journal_mode})"
        return text + f"; journal {self.journal}; images {self.images}"


def describe_location(
    settings: Settings, env: Mapping[str, str] | None = None, mounts: list[Mount] | None = None
) -> StorageReport:
    """Say where the data lives and warn when that place is known to be ephemeral.

    `env` and `mounts` default to the real environment and /proc/self/mounts (tests pass their own).
    """
    env = os.environ if env is None else env
    mounts = read_mounts() if mounts is None else mounts
    data_dir = settings.data_dir
    m = mount_of(data_dir, mounts)
    fstype = m.fstype.lower() if m else None
    real = os.path.realpath(data_dir)
    warnings: list[str] = []
    ephemeral = False

    on_root_layer = m is None or (m.mount_point.rstrip("/") or "/") == "/" or fstype in _OVERLAY_FS
    if env.get("SPACE_ID") and on_root_layer:
        ephemeral = True
        warnings.append(
            f"running on a Hugging Face Space (SPACE_ID={env.get('SPACE_ID')}) and DATA_DIR={data_dir} is not on "
            "a mounted storage bucket: every annotation is lost when the Space restarts. Attach a bucket volume "
            "(hf spaces volumes set <space> -v hf://buckets/<ns>/<bucket>:/data) and set DATA_DIR=/data."
        )
    if any(real == t or real.startswith(t + "/") for t in _TEMP_DIRS) or fstype in _VOLATILE_FS:
        ephemeral = True
        warnings.append(
            f"DATA_DIR={data_dir} is a temporary location ({fstype or 'temp folder'}): its content "
            "can be deleted at reboot or by the system's temp cleaner."
        )
    elif fstype in _OVERLAY_FS and not env.get("SPACE_ID"):
        ephemeral = True
        warnings.append(
            f"DATA_DIR={data_dir} is on a container's writable overlay layer: it is lost when the "
            "container is recreated. Mount a volume there."
        )

    network = settings.resolved_network_fs(mounts) if settings.is_sqlite else bool(m and is_network_fs(m.fstype))
    mode = settings.resolved_journal_mode(mounts) if settings.is_sqlite else None
    if settings.is_sqlite and network and mode == "wal":
        warnings.append(
            "the SQLite file is on a network / bucket file system but journal_mode=wal was forced: "
            "WAL needs shared memory and is unsafe there (set MIMIC_DB_JOURNAL_MODE=delete)."
        )
    if settings.is_sqlite:
        db_path = settings.sqlite_path
        if db_path is not None and not str(db_path).startswith(str(data_dir)):
            # The database lives elsewhere: its durability is its own.
            dm = mount_of(db_path.parent, mounts)
            if dm is not None and dm.fstype.lower() in _VOLATILE_FS:
                ephemeral = True
                warnings.append(f"the SQLite file {db_path} is on {dm.fstype}: it is lost at reboot.")
    return StorageReport(
        data_dir=str(data_dir),
        database=settings.safe_url,
        journal=str(settings.journal_path),
        images=str(settings.images_dir),
        mount_point=m.mount_point if m else None,
        fstype=fstype,
        network_fs=network,
        journal_mode=mode,
        ephemeral=ephemeral,
        warnings=warnings,
    )
