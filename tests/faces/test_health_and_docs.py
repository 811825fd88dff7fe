"""Probes, the OpenAPI document, and the error shape of unknown routes."""

from __future__ import annotations

from tests.helpers.servers import LiveServer


def test_health_and_readiness(server: LiveServer) -> None:
    assert server.client.get("/healthz").json()["status"] == "ok"
    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "storage": "ok",
        "workers": "ok",
    }


def test_openapi_lists_the_contract(server: LiveServer) -> None:
    spec = server.client.get("/openapi.json").json()
    paths = spec["paths"]
    assert "post" in paths["/v1/videos/generations"]
    assert "get" in paths["/v1/tasks/{task_id}"]
    assert "post" in paths["/v1/tasks/{task_id}/cancel"]
    schema = paths["/v1/videos/generations"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert {
        "model",
        "prompt",
        "duration",
        "quality",
        "aspect_ratio",
        "image_urls",
        "callback_url",
    } <= set(schema["properties"])
    assert server.client.get("/docs").status_code == 200
    assert server.client.get("/redoc").status_code == 200
    icon = server.client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert icon.content.startswith(b"\x89PNG")


def test_unknown_route_and_method_use_the_error_shape(server: LiveServer) -> None:
    missing = server.client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = server.client.delete("/v1/videos/generations")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
