"""Who may do what: the one table every write and job handler checks (`AppContext.require`).

Visitors (not signed in) may link and inspect; no entry here is needed for that. Every other action
names the roles allowed to do it. A local single-user app (no users configured, loopback address,
`MIMIC_ANONYMOUS_WRITES`) acts as the admin "local". KB edit and import need the roles in
`MIMIC_KB_ROLES` (default `reviewer,admin`): an annotator's edit changes the served index for
everyone.
"""

from __future__ import annotations

from collections.abc import Mapping

ROLES = ("annotator", "reviewer", "admin")
ALL = ROLES
REVIEW = ("reviewer", "admin")
ADMIN = ("admin",)

#: action -> roles allowed to do it
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "annotate": ALL,  # save a link decision, queue submit / skip / undo, /annotate
    "export": ALL,  # JSONL / CSV / training exports (/export): every annotator's decisions
    "analyze": ALL,  # error analysis of the corrections (writes DATA_DIR/analysis)
    "kb_edit": REVIEW,  # add or edit an entity (changes the served index)
    "kb_import": REVIEW,  # import a KB file
    "project_view": ALL,  # see the projects, their progress and guidelines (Projects tab, /projects)
    "project_edit": REVIEW,  # create a project, edit its guidelines / overlap / KB, archive it
    "project_import": REVIEW,  # import a corpus into a project (/import_mentions), pre-annotate it
    "retrain": ADMIN,  # start a retraining job
    "serve": ADMIN,  # promote / roll back the served model version
    "review": REVIEW,  # the review list, resolving a mention, the agreement figures (Review tab, /review, /resolve)
    "users": ADMIN,  # add users, change roles, disable / enable, reset passwords (Users tab)
}


def parse_roles(spec: str, source: str) -> tuple[str, ...]:
    roles = tuple(dict.fromkeys(r.strip() for r in spec.split(",") if r.strip()))
    bad = [r for r in roles if r not in ROLES]
    if not roles or bad:
        from .config import ConfigError  # here: app/config.py imports this module

        raise ConfigError(f"{source} must be a comma-separated list of {', '.join(ROLES)} (got {spec!r})")
    return roles


def permission_table(env: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """The table with the environment's overrides (MIMIC_KB_ROLES for kb_edit and kb_import)."""
    table = dict(PERMISSIONS)
    spec = (env or {}).get("MIMIC_KB_ROLES")
    if spec:
        table["kb_edit"] = table["kb_import"] = parse_roles(spec, "MIMIC_KB_ROLES")
    return table
