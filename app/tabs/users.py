"""The Users tab (admins only): the users table (name, role, active, password), add a user, change a
role, disable / enable, reset a password.

Users live in the database (db/users.py); passwords are hashed here with argon2id
(`app.auth.hash_password`, argon2-cffi) and only the hash is stored. The admin check runs inside
every handler (`ctx.require("users")`), so a raw queue call is refused like the UI. Sign-in reads
the database on every attempt: a new user, a new password or a disabled account counts at the next
sign-in, with no restart, as long as sign-in is on (MIMIC_USERS set, or a user with a password in
the database when the app started).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..auth import MIN_PASSWORD, hash_password
from ..common import PRIVATE, Shared, UserError, message, user_errors, username_of
from ..context import AppContext
from ..permissions import ROLES

USER_COLUMNS = ["name", "role", "active", "password", "created"]


def _password_hash(password) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("the password is longer than 1024 characters")
    return hash_password(password)


def _name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError("enter a user name")
    return name.strip()


# -- handlers ------------------------------------------------------------------------------------------
@user_errors
def users_table(ctx: AppContext, username: str | None) -> pd.DataFrame:
    """Every user; "password" says where the password comes from (never the hash itself)."""
    ctx.require("users", username)
    from_env = {u.name for u in ctx.config.users}
    rows = [
        [
            u.name,
            u.role,
            u.active,
            "stored" if u.has_password else ("MIMIC_USERS" if u.name in from_env else "none"),
            u.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for u in ctx.store.list_users()
    ]
    return pd.DataFrame(rows, columns=USER_COLUMNS)


@user_errors
def add_user(ctx: AppContext, username: str | None, name, role, password) -> str:
    ctx.require("users", username)
    name = _name(name)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    ctx.store.create_user(name, role, _password_hash(password))
    return f"Added {name} ({role})."


@user_errors
def change_role(ctx: AppContext, username: str | None, name, role) -> str:
    ctx.require("users", username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    rec = ctx.store.set_role(_name(name), role)
    return f"{rec.name} is {rec.role} now."


@user_errors
def set_active(ctx: AppContext, username: str | None, name, active: bool) -> str:
    me = ctx.require("users", username)
    name = _name(name)
    if not active and name == me:
        raise UserError("you cannot disable your own account (another admin can)")
    rec = ctx.store.set_active(name, bool(active))
    return f"{rec.name} is {'enabled' if rec.active else 'disabled'}."


@user_errors
def reset_password(ctx: AppContext, username: str | None, name, password) -> str:
    ctx.require("users", username)
    rec = ctx.store.set_password_hash(_name(name), _password_hash(password))
    return f"New password stored for {rec.name}."


# -- the tab -------------------------------------------------------------------------------------------
class UsersTab:
    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Users", id="users", elem_id="tab_users") as self.tab:
            gr.Markdown(
                "Admins only. Passwords are stored as argon2id hashes; a disabled user cannot sign in or "
                "save (their decisions stay). Users from `MIMIC_USERS` sign in with that password until one "
                "is stored here."
            )
            self.msg = gr.Markdown(elem_id="users_msg")
            self.table = gr.Dataframe(headers=USER_COLUMNS, interactive=False, label="Users", elem_id="users_table")
            with gr.Row():
                self.name = gr.Textbox(label="Name", scale=2, elem_id="users_name")
                self.role = gr.Dropdown(list(ROLES), value="annotator", label="Role", scale=1, elem_id="users_role")
                self.password = gr.Textbox(
                    label=f"Password (at least {MIN_PASSWORD} characters)",
                    type="password",
                    scale=2,
                    elem_id="users_password",
                )
            with gr.Row():
                self.add_button = gr.Button("Add user", variant="primary", elem_id="users_add")
                self.role_button = gr.Button("Set role", elem_id="users_set_role")
                self.disable_button = gr.Button("Disable", elem_id="users_disable")
                self.enable_button = gr.Button("Enable", elem_id="users_enable")
                self.reset_button = gr.Button("Reset password", elem_id="users_reset")

    def _wire(self):
        s = self.shared
        out = [self.msg, self.table, self.password]
        gr.on([self.tab.select], self.refresh, None, [self.msg, self.table], **PRIVATE)
        self.table.select(self.pick, [self.table], [self.name, self.role], **PRIVATE)
        actions = [
            ("add", self.add_button, lambda r, n, ro, pw: add_user(self.ctx, username_of(r), n, ro, pw)),
            ("set_role", self.role_button, lambda r, n, ro, pw: change_role(self.ctx, username_of(r), n, ro)),
            ("disable", self.disable_button, lambda r, n, ro, pw: set_active(self.ctx, username_of(r), n, False)),
            ("enable", self.enable_button, lambda r, n, ro, pw: set_active(self.ctx, username_of(r), n, True)),
            ("reset", self.reset_button, lambda r, n, ro, pw: reset_password(self.ctx, username_of(r), n, pw)),
        ]
        for label, button, act in actions:
            button.click(
                self._runner(act, f"users_{label}"), [self.name, self.role, self.password], out, **s.db_queue, **PRIVATE
            )

    def _runner(self, act, name: str = "users_action"):
        """The event function of one button (named `name`: events are found by it in tests)."""

        def run(name, role, password, request: gr.Request):
            try:
                done = act(request, name, role, password)
            except UserError as exc:
                return message(str(exc), "error"), gr.update(), ""
            return message(done, "ok"), self._table_or_empty(request), ""

        run.__name__ = run.__qualname__ = name
        return run

    def _table_or_empty(self, request):
        try:
            return users_table(self.ctx, username_of(request))
        except UserError:
            return pd.DataFrame(columns=USER_COLUMNS)

    def refresh(self, request: gr.Request):
        try:
            return "", users_table(self.ctx, username_of(request))
        except UserError as exc:
            return message(str(exc), "error"), pd.DataFrame(columns=USER_COLUMNS)

    def pick(self, table, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return table.iloc[row]["name"], table.iloc[row]["role"]
        except (IndexError, KeyError):
            return gr.update(), gr.update()


def build(ctx: AppContext, shared: Shared) -> UsersTab:
    return UsersTab(ctx, shared)
