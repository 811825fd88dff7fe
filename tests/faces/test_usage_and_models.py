"""Billing that reads (usage on every face, the ledger page), the model list, and the chosen
seed read back."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from tests.helpers.faces import ark_client, openai_client
from tests.helpers.servers import LiveServer


def _ledger(server: LiveServer, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry of the key, walked page by page with the cursor."""
    entries: list[dict[str, Any]] = []
    after = None
    while True:
        query = {**params, "limit": 2}
        if after is not None:
            query["after"] = after
        page = server.client.get("/v1/usage", params=query, headers=server.auth(token)).json()
        entries += page["data"]
        if not page["has_more"]:
            return entries
        after = page["last_id"]


def test_usage_pages_the_ledger_and_sums_to_the_balance(idle_server: LiveServer) -> None:
    server = idle_server
    token = server.new_key(credits=100)
    other = server.new_key(credits=50)
    key_id = token.split("_")[1]
    first = server.create(token, duration=5, quality="1080p").json()
    second = server.create(token, duration=2, quality="480p").json()
    server.create(other, duration=5).json()
    cancelled = server.client.post(f"/v1/tasks/{first['id']}/cancel", headers=server.auth(token))
    usage = cancelled.json()["usage"]
    assert usage["credits_refunded"] == usage["credits_reserved"] == 8
    assert usage["credits_charged"] == 0
    server.runtime.accounts.grant(key_id, 10, note="top-up")

    entries = _ledger(server, token)
    balance = server.client.get("/v1/credits", headers=server.auth(token)).json()["balance"]
    assert balance == 100 - 2 + 10 == sum(entry["balance_change"] for entry in entries)
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert entries[0]["balance_after"] == balance
    kinds = Counter((entry["type"], entry["task_id"]) for entry in entries)
    assert kinds == {
        ("grant", None): 2,
        ("reserve", first["id"]): 1,
        ("refund", first["id"]): 1,
        ("reserve", second["id"]): 1,
    }
    assert {e["task_id"] for e in entries} <= {None, first["id"], second["id"]}
    oldest_first = _ledger(server, token, order="asc")
    assert oldest_first == entries[::-1]
    only = server.client.get(
        "/v1/usage", params={"task_id": first["id"]}, headers=server.auth(token)
    ).json()
    assert [e["type"] for e in only["data"]] == ["refund", "reserve"]
    assert only["balance"] == balance
    # Another key's usage shows none of this key's entries.
    assert all(e["task_id"] != first["id"] for e in _ledger(server, other))


def test_usage_shows_charges_on_every_face(server: LiveServer) -> None:
    token = server.new_key(credits=100)
    task = server.create(token, duration=2, quality="480p").json()
    done = server.wait_done(token, task["id"])
    assert done["usage"]["credits_charged"] == 2 and done["usage"]["credits_refunded"] == 0
    video = server.client.get(f"/v1/videos/{task['id']}", headers=server.auth(token)).json()
    assert video["usage"] == {"credits_reserved": 2, "credits_charged": 2, "credits_refunded": 0}
    ark = server.client.get(
        f"/api/v3/contents/generations/tasks/{task['id']}", headers=server.auth(token)
    ).json()
    assert ark["usage"]["credits_charged"] == 2 and ark["usage"]["completion_tokens"] > 0


def test_models_list_what_each_accepts(server_factory: Any) -> None:
    server: LiveServer = server_factory(workers=0, group_price_multipliers={"half": Decimal("0.5")})
    token = server.new_key(group="half")
    listed = server.client.get("/v1/models", headers=server.auth(token))
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "doubao-seedance-1.0-pro-fast" and model["object"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"] == "opendance"
    assert model["engine"] == "sandbox" and model["runs"] == "opendance-sandbox"
    assert model["qualities"] == ["480p", "720p", "1080p"]
    assert model["durations"] == {"min": 2, "max": 12, "default": 5}
    assert model["aspect_ratios"]["16:9"] == {
        "480p": "864x480",
        "720p": "1248x704",
        "1080p": "1920x1088",
    }
    assert model["aspect_ratios"]["21:9"]["1080p"] == "2176x928"
    assert set(model["aspect_ratios"]) == {"16:9", "9:16", "1:1", "4:3", "3:4", "21:9"}
    assert model["image_to_video"] is True
    assert model["image_aspect_ratios"] == ["keep_ratio", "adaptive"]
    assert model["pricing"]["group"] == "half"
    assert model["pricing"]["per_second"] == {"480p": 0.3, "720p": 0.5, "1080p": 0.8}
    one = server.client.get(f"/v1/models/{model['id']}", headers=server.auth(token)).json()
    assert one == model
    missing = server.client.get("/v1/models/nope", headers=server.auth(token))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert server.client.get("/v1/models").status_code == 401

    client = openai_client(server, token)
    listed_by_sdk = list(client.models.list())
    assert [m.id for m in listed_by_sdk] == ["doubao-seedance-1.0-pro-fast"]
    assert client.models.retrieve("doubao-seedance-1.0-pro-fast").owned_by == "opendance"


def test_the_chosen_seed_and_prompt_read_back_on_every_face(idle_server: LiveServer) -> None:
    server = idle_server
    token = server.new_key()
    task = server.create(token, seed=-1, prompt="a heron at dawn").json()
    seed = task["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert task["prompt"] == "a heron at dawn"
    assert server.get(token, task["id"]).json()["seed"] == seed
    video = openai_client(server, token).videos.retrieve(task["id"])
    assert video.prompt == "a heron at dawn"
    assert video.model_extra is not None and video.model_extra["seed"] == seed
    ark = ark_client(server, token).content_generation.tasks.get(task_id=task["id"])
    assert ark.seed == seed
    fixed = server.create(token, seed=7).json()
    assert fixed["seed"] == 7
