"""Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

Each key has its own `whsec_` secret. After a rotation the previous secret also signs for
`ROTATION_GRACE_SECONDS`, as the spec allows (space-separated signatures), so a receiver can
switch secrets without dropping callbacks.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

ROTATION_GRACE_SECONDS = 24 * 3600


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signature_header(secrets_in_use: list[str], webhook_id: str, timestamp: int, body: str) -> str:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(Webhook(secret).sign(webhook_id, when, body) for secret in secrets_in_use)


def signed_headers(
    secrets_in_use: list[str], webhook_id: str, timestamp: int, body: str
) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_in_use, webhook_id, timestamp, body),
    }
