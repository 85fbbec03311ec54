"""Large bodies stream through couchgate: memory stays flat while tens of MB pass."""

from __future__ import annotations

import hashlib
import tracemalloc

from support import Gateway, TestUser

SIZE = 32 * 1024 * 1024
CHUNK = 256 * 1024


async def test_large_attachment_is_streamed_not_buffered(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    block = bytes(range(256)) * (CHUNK // 256)
    digest = hashlib.sha256()

    async def body():  # no Content-Length: chunked, as a phone uploading a video would
        for _ in range(SIZE // CHUNK):
            yield block

    tracemalloc.start()
    try:
        async with gateway.http.put(
            f"{gateway.url}/{db}/big/video.bin", data=body(),
            headers={"Authorization": alice, "Content-Type": "application/octet-stream"},
        ) as resp:  # fmt: skip
            assert resp.status == 201, await resp.text()
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        received = 0
        async with gateway.http.get(
            f"{gateway.url}/{db}/big/video.bin", headers={"Authorization": alice}
        ) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(CHUNK):
                received += len(chunk)
                digest.update(chunk)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == SIZE
    assert digest.hexdigest() == hashlib.sha256(block * (SIZE // CHUNK)).hexdigest()
    # The test client and couchgate share this process: both together stay far below the body.
    assert upload_peak < SIZE / 4, upload_peak
    assert download_peak < SIZE / 4, download_peak
