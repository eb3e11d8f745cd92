"""Users who sign in: the annotators table with a role, an active flag and a salted password hash.

Why here and not in the app: the roles decide what the store itself allows (`resolve` is for
reviewers only), and users added in the app must survive restarts, so they live in the database.
Hashing stays in the app (app/auth.py, argon2id through argon2-cffi): the store only keeps what it
is given, and refuses anything that is not an argon2 hash, so a plaintext password can never be
stored by mistake.

Like `add_annotator`, these changes are not journaled: the journal carries decisions (and a
snapshot of their annotator's role, enough to rebuild who decided what), not accounts.

The last active admin can be neither demoted nor disabled (nobody could manage users any more).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ._base import MAX_NAME, StoreBase, check_choice, check_text
from .errors import Conflict, InvalidInput
from .models import ROLES, Annotator, utcnow
from .records import SignInRecord, UserRecord

MAX_HASH = 512


def _user_record(a: Annotator) -> UserRecord:
    return UserRecord(
        id=a.id,
        name=a.name,
        role=a.role,
        active=bool(a.active),
        has_password=a.password_hash is not None,
        created_at=a.created_at,
    )


def check_password_hash(value, field: str = "password_hash") -> str:
    check_text(value, field, max_len=MAX_HASH)
    if not value.startswith("$argon2"):
        raise InvalidInput("must be an argon2 hash (app/auth.py hash_password), never a plaintext password", field)
    return value


def check_user_name(name) -> str:
    check_text(name, "name", max_len=MAX_NAME)
    if name != name.strip():
        raise InvalidInput("must not start or end with spaces", "name")
    if ":" in name or "," in name or "\n" in name:
        raise InvalidInput("must not contain ':', ',' or a line break", "name")
    return name


class UsersMixin(StoreBase):
    def list_users(self) -> list[UserRecord]:
        """Every user (annotator row), oldest first; `has_password` instead of the hash."""
        return self.read_transaction(
            lambda s: [_user_record(a) for a in s.scalars(select(Annotator).order_by(Annotator.id))]
        )

    def create_user(self, name: str, role: str = "annotator", password_hash: str | None = None) -> UserRecord:
        """A new user; Conflict when the name is taken (use `set_role` / `set_password_hash`)."""
        check_user_name(name)
        check_choice(role, "role", ROLES)
        if password_hash is not None:
            check_password_hash(password_hash)

        def fn(s: Session, events: list) -> UserRecord:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise Conflict(f"a user named {name!r} already exists", "name")
            row = Annotator(name=name, role=role, active=True, password_hash=password_hash, created_at=utcnow())
            s.add(row)
            s.flush()
            return _user_record(row)

        return self._write(fn)

    def ensure_user(self, name: str, role: str = "annotator") -> UserRecord:
        """The user named `name`, created with `role` when absent; an existing one is returned as
        it is (its role, active flag and password are the database's, whatever `role` says)."""
        check_text(name, "name", max_len=MAX_NAME)
        check_choice(role, "role", ROLES)

        def fn(s: Session, events: list) -> UserRecord:
            row = s.scalar(select(Annotator).where(Annotator.name == name))
            if row is None:
                row = Annotator(name=name, role=role, active=True, created_at=utcnow())
                s.add(row)
                s.flush()
            return _user_record(row)

        # read first: the common case (the user exists) takes no write lock
        found = self.read_transaction(lambda s: s.scalar(select(Annotator).where(Annotator.name == name)))
        return _user_record(found) if found is not None else self._write(fn)

    def set_role(self, name: str, role: str) -> UserRecord:
        check_choice(role, "role", ROLES)
        return self._change_user(name, role=role)

    def set_active(self, name: str, active: bool) -> UserRecord:
        """Disable (False) or enable (True) a user: a disabled user cannot sign in or write; their
        decisions stay."""
        if not isinstance(active, bool):
            raise InvalidInput(f"expected true or false, got {type(active).__name__}", "active")
        return self._change_user(name, active=active)

    def set_password_hash(self, name: str, password_hash: str | None) -> UserRecord:
        """Set (or clear, with None) a user's argon2 hash. Cleared: the user signs in with their
        MIMIC_USERS entry when there is one, else not at all (HF OAuth still works)."""
        if password_hash is not None:
            check_password_hash(password_hash)
        return self._change_user(name, password_hash=password_hash)

    def _change_user(self, name: str, **values) -> UserRecord:
        def fn(s: Session, events: list) -> UserRecord:
            aid = self._annotator_row(s, name, "name").id
            row = s.get_one(Annotator, aid)
            stays_admin = values.get("role", row.role) == "admin" and values.get("active", row.active)
            if row.role == "admin" and row.active and not stays_admin:
                others = s.scalar(
                    select(func.count())
                    .select_from(Annotator)
                    .where(Annotator.role == "admin", Annotator.active.is_(True), Annotator.id != row.id)
                )
                if not others:
                    raise Conflict(f"{name!r} is the last active admin: make another user admin first", "name")
            for k, v in values.items():
                setattr(row, k, v)
            s.flush()
            return _user_record(row)

        return self._write(fn)

    def user_for_sign_in(self, name: str) -> SignInRecord | None:
        """Role, active flag and password hash of `name` for the sign-in check; None when unknown
        (or when the name is not a valid one: sign-in answers both the same way)."""
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\x00" in name:
            return None

        def fn(s: Session) -> SignInRecord | None:
            row = s.scalar(select(Annotator).where(Annotator.name == name))
            if row is None:
                return None
            return SignInRecord(name=row.name, role=row.role, active=bool(row.active), password_hash=row.password_hash)

        return self.read_transaction(fn)

    def has_password_users(self) -> bool:
        """Is there an active user with a stored password (then the app asks everyone to sign in)?"""
        q = (
            select(func.count())
            .select_from(Annotator)
            .where(Annotator.password_hash.is_not(None), Annotator.active.is_(True))
        )
        return self.read_transaction(lambda s: bool(s.scalar(q)))
