"""`slack` in Python: one Slack message per `vm.*` call, before and after it
runs: who did what to which VM, and how it went.

Settings (the `[settings]` table of `slack.toml`): `url`, the Slack incoming
web-hook URL.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Delivery, Event, Level, Outcome, Phase, Subscription


class WitWorld(wit_world.WitWorld):
    def setup(self, settings: str) -> Subscription:
        try:
            config = json.loads(settings)
        except ValueError as e:
            raise Err(f"settings: not JSON: {e}")
        url = config.get("url") if isinstance(config, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise Err("settings: `url` must be an http(s) URL, e.g. https://hooks.slack.com/services/...")
        unknown = set(config) - {"url"}
        if unknown:
            raise Err(f"settings: unknown field(s) {', '.join(sorted(unknown))}; expected `url`")
        # Instance state: `setup` runs right before `handle` in every instance.
        global URL
        URL = url
        return Subscription(methods=["vm.*"], phases=[Phase.PRE, Phase.POST])

    def handle(self, event: Event) -> Outcome:
        try:
            payload = json.loads(event.payload)
        except ValueError as e:
            raise Err(f"payload is not JSON: {e}")
        message = f"{user(payload)} called {event.method} on VM {vm_id(event.method, payload)}: {outcome(event.phase, payload)}"
        if event.phase == Phase.POST and payload.get("error") is not None:
            wit_world.log(Level.INFO, f"{event.method} failed; telling Slack")
        body = json.dumps({"text": escape(message)}).encode()
        return Outcome(deliveries=[Delivery(url=URL, headers=[], body=body)], deny=None)


URL = ""


def user(payload: dict) -> str:
    return payload.get("userName") or payload.get("userId") or "(unknown user)"


def vm_id(method: str, payload: dict) -> str:
    params = payload.get("params") or {}
    for key in ("id", "vm"):
        if params.get(key) is not None:
            return text(params[key])
    result = payload.get("result")
    if method == "vm.create" and isinstance(result, str):
        return result
    return "?"


def outcome(phase: Phase, payload: dict) -> str:
    if phase == Phase.PRE:
        return "requested"
    error = payload.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else None
        return f"failed: {message if isinstance(message, str) else text(error)}"
    duration = payload.get("duration")
    if isinstance(duration, int) and duration >= 0:
        return f"succeeded in {duration} ms"
    return "succeeded"


def text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def escape(s: str) -> str:
    """Slack's three control characters in message text."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
