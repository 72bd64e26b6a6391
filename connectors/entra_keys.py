"""The tenant's token signing keys, fetched from Entra ID, cached and rotated.

Keys come from the OpenID metadata's ``jwks_uri``. They are kept for a day;
a token naming an unknown key id triggers one refresh (at most every few
minutes, so forged key ids cannot make tokenward hammer Entra ID), which is
how a key rotation is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
from jwt.algorithms import RSAAlgorithm

from playbooks.errors import ServiceUnavailable

logger = logging.getLogger(__name__)


class SigningKeys:
    def __init__(
        self,
        *,
        metadata_url: str,
        verify: Any = True,
        ttl_s: float = 86400,
        min_refresh_s: float = 300,
        timeout_s: float = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._metadata_url = metadata_url
        self._verify = verify
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._transport = transport
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def key(self, kid: str) -> Any:
        """The public key for *kid*; ``KeyError`` if the tenant does not publish it."""
        return self._keys[kid]

    @property
    def loaded(self) -> bool:
        """True once the keys were fetched at least once."""
        return self._fetched_at > 0

    def known(self, kid: str) -> bool:
        return kid in self._keys

    async def refresh(self) -> None:
        """Fetch the keys now (the service does this at start and once a day)."""
        async with self._lock:
            await self._refresh()

    async def ensure(self, kid: str) -> None:
        """Make sure *kid* is known if the tenant publishes it, refreshing if due."""
        stale = time.monotonic() - self._fetched_at > self._ttl_s
        if kid in self._keys and not stale:
            return
        async with self._lock:
            since = time.monotonic() - self._fetched_at
            if kid in self._keys and since <= self._ttl_s:
                return
            if self._keys and since < self._min_refresh_s and not stale:
                return
            await self._refresh()

    async def _refresh(self) -> None:
        async with httpx.AsyncClient(
            verify=self._verify, timeout=self._timeout_s, transport=self._transport
        ) as client:
            try:
                metadata = (await client.get(self._metadata_url)).raise_for_status().json()
                jwks = (await client.get(metadata["jwks_uri"])).raise_for_status().json()
            except (httpx.HTTPError, KeyError, ValueError) as failure:
                raise ServiceUnavailable(
                    f"the tenant's signing keys could not be fetched ({type(failure).__name__})"
                ) from None
        keys = {}
        for item in jwks.get("keys", []):
            if item.get("kty") == "RSA" and item.get("kid"):
                keys[item["kid"]] = RSAAlgorithm.from_jwk(json.dumps(item))
        self._keys = keys
        self._fetched_at = time.monotonic()
        logger.info("fetched %d signing keys", len(keys))
