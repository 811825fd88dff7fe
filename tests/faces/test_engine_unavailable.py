"""An engine that cannot serve answers 503 `engine_unavailable` on every face, never 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from opendance.settings import DEFAULT_MODEL, Route, RouteEngine
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]


def _routes(tmp_path: Path) -> dict[str, Route]:
    return {
        DEFAULT_MODEL: Route(engines=[RouteEngine(engine="sandbox")]),
        "gone-gpu": Route(
            engines=[RouteEngine(engine="diffusers", options={"model": str(tmp_path / "gone")})]
        ),
        "typo": Route(engines=[RouteEngine(engine="sandbx")]),
    }


def test_create_on_a_broken_engine_is_503_engine_unavailable(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(routes=_routes(tmp_path), workers=0)
    key = server.new_key(credits=100)
    for model in ("gone-gpu", "typo"):
        answers = [
            server.client.post(
                "/v1/videos/generations",
                json={"model": model, "prompt": "a cat"},
                headers=server.auth(key),
            ),
            server.client.post(
                "/v1/videos", json={"model": model, "prompt": "a cat"}, headers=server.auth(key)
            ),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "engine_unavailable"
            assert answer.headers["Retry-After"] == "5"
        ark = server.client.post(
            "/api/v3/contents/generations/tasks",
            json={"model": model, "content": [{"type": "text", "text": "a cat"}]},
            headers=server.auth(key),
        )
        assert ark.status_code == 503, ark.text
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] == 100

    listed = server.client.get("/v1/models", headers=server.auth(key))
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == [DEFAULT_MODEL]
    one = server.client.get("/v1/models/typo", headers=server.auth(key))
    assert one.status_code == 503 and one.json()["error"]["code"] == "engine_unavailable"
    assert "sandbx" in one.json()["error"]["message"]

    fine = server.client.post(
        "/v1/videos/generations",
        json={"model": DEFAULT_MODEL, "prompt": "a cat"},
        headers=server.auth(key),
    )
    assert fine.status_code == 200, fine.text
