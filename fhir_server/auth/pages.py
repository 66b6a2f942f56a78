"""The login and consent pages: plain HTML forms (no JavaScript), every value escaped, each form carrying
the CSRF token that must match the browser's cookie."""

from __future__ import annotations

from html import escape

from .server import PREFIX, Pending

# What a scope lets the app do, in words a user can judge.
_CONTEXT = {"patient": "the chosen patient's", "user": "all the records you can see:", "system": "all"}
_ACTIONS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_NAMED = {"openid": "Know who you are (your user name)", "fhirUser": "Know your own record (your FHIR user)",
          "launch": "Open with the context the EHR gives it", "launch/patient": "Work with one patient you choose",
          "launch/encounter": "Work within the current encounter",
          "offline_access": "Keep access after you log out (until you revoke it)",
          "online_access": "Keep access while you are logged in"}

_CSS = """body{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0;color:#1d2329}
main{max-width:34rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.6rem 0}
input[type=text],input[type=password],input[type=search]{width:100%;padding:.5rem;box-sizing:border-box}
button{padding:.5rem 1.2rem;margin:.8rem .6rem 0 0;border:0;border-radius:4px;background:#1f6feb;color:#fff}
button.deny{background:#6e7781}.error{color:#b42318;font-weight:600}.scope code{color:#57606a;font-size:.85em}
fieldset{border:1px solid #d0d7de;border-radius:6px;margin:1rem 0}"""


def describe(scope: str) -> str:
    if scope in _NAMED:
        return _NAMED[scope]
    context, _, rest = scope.partition("/")
    resource, _, permissions = rest.partition(".")
    permissions, _, query = permissions.partition("?")
    letters = {"read": "rs", "write": "cud", "*": "cruds"}.get(permissions, permissions)
    actions = ", ".join(_ACTIONS[c] for c in letters if c in _ACTIONS)
    what = "resources of every type" if resource == "*" else f"{resource} resources"
    where = f" matching {query}" if query else ""
    return f"{actions.capitalize()} {_CONTEXT.get(context, context)} {what}{where}"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{escape(title)}</title><style>{_CSS}</style>"
            f"</head><body><main><h1>{escape(title)}</h1>{body}</main></body></html>")


def _hidden(pending: Pending) -> str:
    return (f"<input type=hidden name=request value='{escape(pending.id)}'>"
            f"<input type=hidden name=csrf value='{escape(pending.csrf)}'>")


def _error(pending: Pending) -> str:
    return f"<p class=error role=alert>{escape(pending.error)}</p>" if pending.error else ""


def login_page(pending: Pending, username: str = "") -> str:
    return _page("Log in", (
        f"<p><strong>{escape(pending.client.name)}</strong> asks for access to health records.</p>{_error(pending)}"
        f"<form method=post action='{PREFIX}/login'>{_hidden(pending)}"
        f"<label>User name <input type=text name=username autocomplete=username required "
        f"value='{escape(username)}'></label>"
        "<label>Password <input type=password name=password autocomplete=current-password required></label>"
        "<button type=submit>Log in</button></form>"))


def consent_page(pending: Pending) -> str:
    assert pending.user is not None
    scopes = "".join(
        f"<label class=scope><input type=checkbox name=scope value='{escape(s)}' checked> {escape(describe(s))} "
        f"<code>{escape(s)}</code></label>" for s in pending.scopes)
    picker = ""
    if pending.needs_patient_choice():
        choices = "".join(
            f"<label><input type=radio name=patient value='{escape(p['id'])}'> {escape(p['name'])} "
            f"<code>{escape(p['birthDate'])} Patient/{escape(p['id'])}</code></label>" for p in pending.patients)
        picker = (f"<fieldset><legend>Patient</legend>{choices or '<p>No patient matches.</p>'}"
                  f"<label>Or the patient's id <input type=text name=patient_id></label></fieldset>")
        search = (f"<form method=get action='{PREFIX}/consent'><input type=hidden name=request "
                  f"value='{escape(pending.id)}'><label>Find a patient by name <input type=search name=q "
                  f"value='{escape(pending.query)}'></label><button type=submit>Search</button></form>")
    else:
        search = ""
    return _page("Allow access?", (
        f"<p>Logged in as <strong>{escape(pending.user.username)}</strong> "
        f"(<code>{escape(pending.user.fhir_user)}</code>).</p>"
        f"<p><strong>{escape(pending.client.name)}</strong> asks to:</p>{_error(pending)}{search}"
        f"<form method=post action='{PREFIX}/consent'>{_hidden(pending)}<fieldset><legend>Permissions "
        f"(untick what you do not want to give)</legend>{scopes}</fieldset>{picker}"
        "<button type=submit name=action value=approve>Allow</button>"
        "<button type=submit name=action value=deny class=deny>Deny</button></form>"))


def error_page(message: str) -> str:
    return _page("Authorization failed", f"<p class=error role=alert>{escape(message)}</p>")
