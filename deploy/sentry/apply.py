"""make sentry-alerts: create or update the Sentry alerts and monitors of deploy/sentry/.

Sentry's current alerting API (the workflow engine, "Monitors & Alerts" in its API reference):
- monitors (detectors): listed at /api/0/organizations/{org}/detectors/?project={id}, created there
  with the projectId in the body, updated at /api/0/organizations/{org}/detectors/{id}/;
- alerts (workflows): /api/0/organizations/{org}/workflows/ and .../workflows/{id}/.
Every list is read to its last page: Sentry pages them with a Link header and a cursor, and an alert
made by an earlier run may sit on any page. The deprecated .../rules/ and .../alert-rules/
endpoints are never called.

What it manages is what carries the name prefix "[background-tasks] ": a definition with no such
object is created, one that differs is updated (PUT), one that matches is left alone, so a second
run changes nothing. Anything else in the organization is never touched.

A body's string values may be placeholders, resolved before sending:
  {{project_id}}             the project's id
  {{issue_stream_detector}}  the project's issue-stream monitor, which error issues come from
  {{monitor:<name>}}         the id of a monitor defined here (monitors are applied first)
  {{team:<slug>}}            a team's id
  {{env:<VAR>|<default>}}    an environment variable, or the default (an integer if it looks like one)

Reads SENTRY_AUTH_TOKEN (scope alerts:write), SENTRY_ORG, SENTRY_PROJECT and SENTRY_URL (default
https://sentry.io/, as sentry-cli reads it; a regional or self-hosted Sentry goes there).
"""

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PREFIX = "[background-tasks] "
_PLACEHOLDER = re.compile(r"^\{\{(.+)\}\}$")
# One link of Sentry's Link header: <url>; rel="next"; results="true"; cursor="0:100:0"
_LINK = re.compile(r'<[^>]*>;\s*rel="(?P<rel>[^"]+)";\s*results="(?P<results>[^"]+)";\s*cursor="(?P<cursor>[^"]+)"')
# A guard against a server that hands back the same cursor for ever, far above any real organization.
_MAX_PAGES = 1000


class ApplyError(Exception):
    """A problem worth one line to the user, never a traceback."""


class Sentry:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._token = token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self._send(method, path, body)[0]

    def list(self, path: str, **params: str) -> list[Any]:
        """Every item of a paginated list: follows the Link header's next cursor until its results="false"."""
        items: list[Any] = []
        cursor = None
        for _page in range(_MAX_PAGES):
            query = urllib.parse.urlencode({**params, **({"cursor": cursor} if cursor else {})})
            page, link = self._send("GET", f"{path}?{query}" if query else path)
            items.extend(page)
            following = {m["rel"]: m for m in _LINK.finditer(link)}.get("next")
            if following is None or following["results"] != "true":
                return items
            if following["cursor"] == cursor:
                raise ApplyError(f"GET {path}: the next page's cursor did not move ({cursor})")
            cursor = following["cursor"]
        raise ApplyError(f"GET {path}: more than {_MAX_PAGES} pages")

    def _send(self, method: str, path: str, body: Any = None) -> tuple[Any, str]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - SENTRY_URL is the user's own Sentry
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                payload = response.read()
                link = response.headers.get("Link", "")
        except urllib.error.HTTPError as error:
            raise ApplyError(_http_error(method, path, error)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApplyError(f"cannot reach {self.url} ({reason}): check SENTRY_URL") from None
        return (json.loads(payload) if payload else None), link


def _http_error(method: str, path: str, error: urllib.error.HTTPError) -> str:
    if error.code == 401:
        return "Sentry refused the token (401): check SENTRY_AUTH_TOKEN"
    if error.code == 403:
        return f"{method} {path}: forbidden (403): the token needs the alerts:write scope in this organization"
    if error.code == 404:
        return f"{method} {path}: not found (404): check SENTRY_ORG, SENTRY_PROJECT and SENTRY_URL"
    detail = error.read()[:300].decode("utf-8", "replace").replace("\n", " ")
    return f"{method} {path} answered {error.code}: {detail}"


def definitions(kind: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((HERE / kind).glob("*.json"))]


def resolve(value: Any, lookup: Callable[[str], Any]) -> Any:
    if isinstance(value, dict):
        return {key: resolve(item, lookup) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, lookup) for item in value]
    if isinstance(value, str) and (match := _PLACEHOLDER.match(value)):
        return lookup(match.group(1))
    return value


def from_env(spec: str) -> Any:
    name, _, default = spec.partition("|")
    value = os.environ.get(name) or default
    if not value:
        raise ApplyError(f"{name} is not set and has no default")
    return int(value) if value.isdigit() else value


def matches(ours: Any, theirs: Any) -> bool:
    """Whether the server's object already holds everything we would send."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(matches(v, theirs.get(k)) for k, v in ours.items())
    if isinstance(ours, list):
        return isinstance(theirs, list) and len(ours) == len(theirs) and all(map(matches, ours, theirs))
    if {type(ours), type(theirs)} in ({int, str}, {float, str}):
        return str(ours) == str(theirs)  # ids and thresholds may come back as strings, or as numbers
    return bool(ours == theirs)


def _detector_view(detector: dict[str, Any]) -> dict[str, Any]:
    """A detector as the server returns it, in the shape it is sent: the query under queryObj."""
    sources = []
    for source in detector.get("dataSources") or []:
        query = (source.get("queryObj") or {}).get("snubaQuery")
        sources.append({**source, **query, "queryType": query.get("type", 0)} if query else source)
    return {**detector, "dataSources": sources}


def _managed(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What this tool manages, by name. Of two with one name (left by hand, or by an older version that
    read only a list's first page), the oldest is kept up to date and the others are named, not deleted."""
    by_name: dict[str, dict[str, Any]] = {}
    for obj in sorted(objects, key=lambda o: int(o["id"])):
        name = obj.get("name", "")
        if not name.startswith(PREFIX):
            continue
        if name in by_name:
            print(f"duplicate  {name}: id {obj['id']} is not managed; {by_name[name]['id']} is (delete the other)")
            continue
        by_name[name] = obj
    return by_name


class Applier:
    def __init__(self, sentry: Sentry, org: str, project: str, *, dry_run: bool) -> None:
        self.sentry, self.org, self.project, self.dry_run = sentry, org, project, dry_run
        self.monitor_ids: dict[str, str] = {}
        self._teams: dict[str, str] | None = None
        self._project_id = ""
        self._issue_stream = ""
        self.changes = 0

    def lookup(self, name: str) -> Any:
        kind, _, argument = name.partition(":")
        if name == "project_id":
            return self._project_id
        if name == "issue_stream_detector":
            return self._issue_stream
        if kind == "monitor":
            if argument not in self.monitor_ids:
                raise ApplyError(f"no monitor named {argument!r} in deploy/sentry/monitors/")
            return self.monitor_ids[argument]
        if kind == "team":
            return self._team(argument)
        if kind == "env":
            return from_env(argument)
        raise ApplyError(f"unknown placeholder {{{{{name}}}}}")

    def _team(self, slug: str) -> str:
        if self._teams is None:
            teams = self.sentry.list(f"/api/0/organizations/{self.org}/teams/")
            self._teams = {team["slug"]: str(team["id"]) for team in teams}
        if slug not in self._teams:
            raise ApplyError(f"no team {slug!r} in organization {self.org}: edit the team in deploy/sentry/")
        return self._teams[slug]

    def run(self) -> None:
        project = self.sentry.request("GET", f"/api/0/projects/{self.org}/{self.project}/")
        self._project_id = str(project["id"])
        detectors_path = f"/api/0/organizations/{self.org}/detectors/"
        detectors = self.sentry.list(detectors_path, project=self._project_id)
        stream = [d for d in detectors if d.get("type") == "issue_stream"]
        if not stream:
            raise ApplyError(f"project {self.project} has no issue-stream monitor: is it on Sentry's alerting API?")
        self._issue_stream = str(stream[0]["id"])
        existing = _managed(map(_detector_view, detectors))
        for definition in definitions("monitors"):
            self.monitor_ids[definition["name"]] = self._apply(definition, existing, detectors_path)
        # Workflows are the organization's: ours are those of this project's monitors, so two projects
        # applying the same definitions each keep their own.
        ours = {str(d["id"]) for d in detectors} | set(self.monitor_ids.values())
        workflows_path = f"/api/0/organizations/{self.org}/workflows/"
        workflows = self.sentry.list(workflows_path)
        existing = _managed(w for w in workflows if {str(i) for i in w.get("detectorIds") or []} <= ours)
        for definition in definitions("alerts"):
            self._apply(definition, existing, workflows_path)

    def _apply(self, definition: dict[str, Any], existing: dict[str, Any], collection: str) -> str:
        """Create at the collection (POST), or update the object at collection/{id}/ (PUT)."""
        body = resolve(definition, self.lookup)
        current = existing.get(body["name"])
        if current is not None and matches(body, current):
            print(f"unchanged  {body['name']}")
            return str(current["id"])
        method, path = ("POST", collection) if current is None else ("PUT", f"{collection}{current['id']}/")
        self.changes += 1
        if self.dry_run:
            print(f"would {method} {path}\n{json.dumps(body, indent=2)}")
            return str(current["id"]) if current is not None else f"(the id of new {body['name']!r})"
        saved = self.sentry.request(method, path, body)
        print(f"{'created' if method == 'POST' else 'updated'}    {body['name']}")
        return str(saved["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent; change nothing")
    args = parser.parse_args(argv)
    try:
        missing = [name for name in ("SENTRY_AUTH_TOKEN", "SENTRY_ORG", "SENTRY_PROJECT") if not os.environ.get(name)]
        if missing:
            raise ApplyError(f"{', '.join(missing)} not set")
        sentry = Sentry(os.environ.get("SENTRY_URL") or "https://sentry.io/", os.environ["SENTRY_AUTH_TOKEN"])
        applier = Applier(sentry, os.environ["SENTRY_ORG"], os.environ["SENTRY_PROJECT"], dry_run=args.dry_run)
        applier.run()
    except ApplyError as error:
        print(f"sentry-alerts: {error}", file=sys.stderr)
        return 1
    print(f"{applier.changes} {'to change' if args.dry_run else 'changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
