"""Schemathesis over the OpenAPI document of a live server: no 5xx, no response off the schema.

One real server (uvicorn on loopback, no workers: tasks stay where the test puts them) with a
key that has plenty of credits and no practical rate or task limits. Before the fuzzer starts,
the key gets one task in each interesting state (completed with a real result file, cancelled,
pending); the fuzzer draws those ids, the parts of a valid signed result URL and the configured
model names some of the time, so it reaches the code behind the 404s and 400s as well. A small
dictionary of awkward strings and integers (NUL, control and bidi characters, path tricks,
values past 64 bits) is mixed into every generated string and integer.

Schemathesis runs as its CLI (`python -m schemathesis.cli run`, in a subprocess) with a
generated `schemathesis.toml`: that is its documented interface (the pytest plugin's
fixture-based loader breaks on pytest 9), it runs every phase (examples, coverage, fuzzing,
stateful), and a failure prints the curl command that reproduces it. The document is the
server's own `/openapi.json` plus `LINKS`, the create -> get -> cancel/delete chains the
stateful phase follows (the served document has no links of its own).

Two runs: with the Bearer key on every call, and without any credentials (every answer must
still be documented, the 401s included).

Checks: `CHECKS`, every check of Schemathesis but `object_level_authorization` (it needs a
second user's credentials; the faces' tests cover another key's task) and these two:
- `positive_data_acceptance` demands a 2xx for every schema-valid request. The contract has
  rules that JSON Schema does not express (a prompt of only spaces, `keep_ratio` without an
  image, an image URL that must be public, a signed URL that expired), and those answer
  400/410 by design.
- `use_after_free` demands a 404 for anything read after a DELETE. A deleted task is a 404
  everywhere, but Ark's `DELETE` of a queued or running task only cancels it (as Ark does),
  and the task stays readable as `cancelled`: the check cannot tell the two apart.

Seeded and single-worker: a run is reproducible (the seed is printed with any failure); the
CLI's output, its JSON report and the config are kept beside each other in the test's tmp dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from opendance.faces import polling
from tests.helpers.servers import LiveServer, make_settings, start_server

pytestmark = pytest.mark.slow

SEED = 20261125
MAX_EXAMPLES = 40
#: Without a key most operations stop at the 401: fewer examples say as much.
MAX_EXAMPLES_WITHOUT_KEY = 20
STATEFUL_MAX_STEPS = 6
#: One worker: the same seed gives the same requests in the same order (two are not faster
#: on a 2-core runner that also runs the server).
WORKERS = 1

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "ensure_resource_availability",
]
EXCLUDED_CHECKS = ["positive_data_acceptance", "use_after_free"]

#: Strings that have broken servers before: NUL (PostgreSQL refuses it in text), control and
#: bidi characters, path tricks, numbers as text, astral characters, a long value.
NASTY_STRINGS = [
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\u202e",
    "../../../../etc/passwd",
    "%00",
    "' OR '1'='1",
    "-1",
    "99999999999999999999999999",
    "NaN",
    "\U0001f3ac" * 20,
    "x" * 3000,
]
NASTY_INTEGERS = [-1, 0, 2**31, 2**32, 2**63, -(2**63) - 1, 10**30]


@dataclass
class FuzzTarget:
    live: LiveServer
    key: str
    #: Ids of this key's tasks, one per state, for the fuzzer to draw.
    task_ids: list[str]
    #: A valid signed result URL's path parts: (expires, signature, task id).
    signed: tuple[int, str, str]
    models: list[str]


def _seed_tasks(live: LiveServer, key: str) -> tuple[list[str], tuple[int, str, str]]:
    """A completed task (its file on disk), a cancelled one and a pending one."""
    runtime = live.runtime
    completed = live.create(key, prompt="fuzz seed: completed", quality="480p", duration=2)
    completed.raise_for_status()
    completed_id = completed.json()["id"]
    claimed = runtime.service.claim_task(completed_id, "fuzz-seeder")
    assert claimed is not None
    runtime.runner.run(claimed)  # the sandbox engine, in this thread: no worker needed
    task = live.get(key, completed_id).json()
    assert task["status"] == "completed", task
    # /v1/files/{expires}/{signature}/{task_id}.mp4
    _, _, _, expires, signature, filename = urlsplit(task["results"][0]).path.split("/")
    cancelled_id = live.create(key, prompt="fuzz seed: cancelled", quality="480p").json()["id"]
    cancel = live.client.post(f"/v1/tasks/{cancelled_id}/cancel", headers=live.auth(key))
    cancel.raise_for_status()
    pending_id = live.create(key, prompt="fuzz seed: pending", quality="480p").json()["id"]
    signed = (int(expires), signature, filename.removesuffix(".mp4"))
    return [completed_id, cancelled_id, pending_id], signed


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz"),
        workers=0,
        rate_limit_create="1000000/minute",
        rate_limit_read="1000000/minute",
        max_active_tasks_per_key=1_000_000,
        max_queued_tasks=1_000_000,
    )
    live = start_server(settings)
    # Long-polls (`?wait=N`, up to 60 s) end after a moment here: the fuzzer checks what is
    # answered, not how long a task is waited on (the polling tests do).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(polling, "MAX_WAIT_SECONDS", 0.2)
        try:
            key = live.new_key(credits=10**12)
            task_ids, signed = _seed_tasks(live, key)
            yield FuzzTarget(live, key, task_ids, signed, live.runtime.router.models())
        finally:
            live.stop()


# ---------------------------------------------------------------------------------------------
# The document under test, with the links the stateful phase follows

#: (operation, response) -> the operations that take its `id`, and under which parameter.
#: The server's document has no `links` yet, and what Schemathesis infers from untyped bodies
#: points at fields that do not exist; these are the chains a client really makes.
LINKS: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("/v1/videos/generations", "post"): [
        ("/v1/tasks/{task_id}", "get", "task_id"),
        ("/v1/tasks/{task_id}/cancel", "post", "task_id"),
        ("/v1/tasks/{task_id}/callbacks", "get", "task_id"),
        ("/v1/videos/{video_id}", "delete", "video_id"),
        ("/api/v3/contents/generations/tasks/{task_id}", "get", "task_id"),
    ],
    ("/v1/tasks/{task_id}", "get"): [
        ("/v1/tasks/{task_id}/cancel", "post", "task_id"),
    ],
    ("/v1/tasks/{task_id}/cancel", "post"): [
        ("/v1/tasks/{task_id}", "get", "task_id"),
        ("/api/v3/contents/generations/tasks/{task_id}", "delete", "task_id"),
    ],
    ("/v1/videos", "post"): [
        ("/v1/videos/{video_id}", "get", "video_id"),
        ("/v1/videos/{video_id}/content", "get", "video_id"),
        ("/v1/videos/{video_id}", "delete", "video_id"),
    ],
    ("/v1/videos/{video_id}", "delete"): [
        ("/v1/videos/{video_id}", "get", "video_id"),
        ("/v1/tasks/{task_id}", "get", "task_id"),
    ],
    ("/api/v3/contents/generations/tasks", "post"): [
        ("/api/v3/contents/generations/tasks/{task_id}", "get", "task_id"),
        ("/api/v3/contents/generations/tasks/{task_id}", "delete", "task_id"),
        ("/v1/tasks/{task_id}/cancel", "post", "task_id"),
    ],
    ("/api/v3/contents/generations/tasks/{task_id}", "delete"): [
        ("/api/v3/contents/generations/tasks/{task_id}", "get", "task_id"),
    ],
}


def operation_ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def document_with_links(document: dict[str, Any]) -> dict[str, Any]:
    """The server's OpenAPI document plus `LINKS` (for the operations it has)."""
    paths = document["paths"]
    for (path, method), targets in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get("200")
        if response is None:
            continue
        links = response.setdefault("links", {})
        for target_path, target_method, parameter in targets:
            if target_method not in paths.get(target_path, {}):
                continue
            name = f"{target_method}:{target_path}"
            links.setdefault(
                name,
                {
                    "operationRef": operation_ref(target_path, target_method),
                    "parameters": {f"path.{parameter}": "$response.body#/id"},
                },
            )
    return document


# ---------------------------------------------------------------------------------------------
# schemathesis.toml


def toml_value(value: Any) -> str:
    """A TOML value for str, int, float, bool, list and dict (inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes (\uXXXX for control characters, \" and \\) are TOML's; astral
        # characters stay literal (ensure_ascii=False), as TOML has no surrogate escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"no TOML for {value!r}")


def config_toml(target: FuzzTarget, *, authenticated: bool) -> str:
    expires, signature, file_task = target.signed
    checks: dict[str, Any] = {"enabled": False}
    checks.update({name: {"enabled": True} for name in CHECKS})
    checks.update({name: {"enabled": False} for name in EXCLUDED_CHECKS})
    config: dict[str, Any] = {
        "seed": SEED,
        "workers": WORKERS,
        "request-timeout": 30,
        # Stop reading an event stream after its first event: a pending task's stream (no
        # workers here) sends nothing more but keep-alives, and would hold each call for
        # `request-timeout`.
        "max-stream-events": 1,
        "suppress-health-check": ["all"],
        "dictionaries": {
            "nasty": {"values": NASTY_STRINGS},
            "nasty_ints": {"values": NASTY_INTEGERS},
            # Real ids and awkward ones, drawn where ids go: the code behind the lookup is hit.
            "ids": {"values": [*target.task_ids, file_task, *NASTY_STRINGS]},
            # The configured names (what every face accepts) most of the time, then the
            # OpenAI and Ark faces' aliases for the default route.
            "models": {"values": [*target.models * 3, "sora-2", "seedance-1-0-pro", "ep-2025"]},
            "prompts": {"values": ["a fox", *NASTY_STRINGS]},
            "expires": {"values": [expires]},
            "signatures": {"values": [signature, *NASTY_STRINGS]},
        },
        "parameters": {
            "path.task_id": {"dictionary": "ids", "probability": 0.6},
            "path.video_id": {"dictionary": "ids", "probability": 0.6},
            "query.after": {"dictionary": "ids", "probability": 0.5},
            "query.filter.model": {"dictionary": "ids", "probability": 0.3},
            "path.expires": {"dictionary": "expires", "probability": 0.6},
            "path.signature": {"dictionary": "signatures", "probability": 0.6},
            "body.model": {"dictionary": "models", "probability": 0.8},
            "body.prompt": {"dictionary": "prompts", "probability": 0.5},
        },
        "generation": {
            "max-examples": MAX_EXAMPLES if authenticated else MAX_EXAMPLES_WITHOUT_KEY,
            "database": "none",
            "dictionaries": {
                "string": {"dictionary": "nasty", "probability": 0.2},
                "integer": {"dictionary": "nasty_ints", "probability": 0.1},
            },
        },
        "checks": checks,
        "phases": {
            "stateful": {
                "enabled": authenticated,
                "max-steps": STATEFUL_MAX_STEPS,
                # Chains need creates that succeed; negative data is the other phases' job.
                "generation": {"mode": "positive"},
                "inference": {"algorithms": ["location-headers"]},
            }
        },
    }
    if authenticated:
        config["headers"] = {"Authorization": f"Bearer {target.key}"}
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in config.items())


def run_schemathesis(target: FuzzTarget, workdir: Path, *, authenticated: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "schemathesis.toml"
    config.write_text(config_toml(target, authenticated=authenticated), encoding="utf-8")
    report = workdir / "report.json"
    document = workdir / "openapi.json"
    served = target.live.client.get("/openapi.json")
    served.raise_for_status()
    document.write_text(json.dumps(document_with_links(served.json())), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        str(document),
        "--url",
        target.live.base_url,
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--output-truncate",
        "false",
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=240, check=False
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    (workdir / "output.txt").write_text(output, encoding="utf-8")
    summary = json.loads(report.read_text()) if report.exists() else {}
    failures = summary.get("failures") or []
    errors = summary.get("errors") or []
    if result.returncode != 0 or failures or errors:
        pytest.fail(
            f"schemathesis ({'with' if authenticated else 'without'} a key, seed {SEED}, "
            f"{elapsed:.0f} s) exited {result.returncode}:\n{output}",
            pytrace=False,
        )


def test_every_operation_with_a_key(fuzz_target: FuzzTarget, tmp_path: Path) -> None:
    run_schemathesis(fuzz_target, tmp_path / "with-key", authenticated=True)


def test_every_operation_without_a_key(fuzz_target: FuzzTarget, tmp_path: Path) -> None:
    run_schemathesis(fuzz_target, tmp_path / "without-key", authenticated=False)


def test_server_is_still_well_after_fuzzing(fuzz_target: FuzzTarget) -> None:
    """No lasting damage: the server is ready and the key's tasks still list."""
    live = fuzz_target.live
    ready = live.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    listed = live.client.get("/v1/tasks", headers=live.auth(fuzz_target.key))
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"], listed.text
