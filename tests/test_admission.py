"""gateway/admission.py in process, in front of a small Starlette app: keys, the body cap and the
bound in flight, without a Triton (tests/test_gateway.py drives the same through the real one)."""

from __future__ import annotations

import asyncio
import hmac

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import admission
from gateway.admission import Admission, Limits
from gateway.app import api_error
from gateway.errors import ApiError


def secret_volume(folder, keys: dict[str, str]):
    """A folder laid out as the kubelet lays out a Secret volume: the files are links through ..data."""
    data = folder / "..2026_12_07_00_00_00.000000001"
    data.mkdir()
    for name, key in keys.items():
        (data / name).write_text(key)
        (folder / name).symlink_to(f"..data/{name}")
    (folder / "..data").symlink_to(data.name)
    return folder


def test_keys_come_one_per_file_named_for_their_client_and_the_volumes_own_entries_are_skipped(tmp_path):
    folder = secret_volume(tmp_path, {"alice": "sk-alice\n", "bench": "sk-bench"})
    assert admission.load_keys(folder) == {"alice": b"sk-alice", "bench": b"sk-bench"}
    assert admission.load_keys(tmp_path / "absent") == {}  # the optional Secret was not mounted: no keys
    assert admission.load_keys(None) == {}


@pytest.mark.parametrize("key", ["", "  \n", "sk two", "sk-ключ"])
def test_a_key_no_authorization_header_can_carry_is_refused_at_start(tmp_path, key):
    (tmp_path / "bad").write_text(key)
    with pytest.raises(admission.KeysError, match="bad"):
        admission.load_keys(tmp_path)


def test_every_key_is_compared_in_constant_time_with_no_early_exit(monkeypatch):
    compared, constant_time = [], hmac.compare_digest

    def recording(a, b):
        compared.append(a)
        return constant_time(a, b)

    monkeypatch.setattr(admission.hmac, "compare_digest", recording)
    keys = {"alice": b"sk-alice", "bench": b"sk-bench", "carol": b"sk-carol"}
    assert admission.match(keys, b"sk-alice") == "alice"
    assert compared == [b"sk-alice", b"sk-bench", b"sk-carol"]  # the match was first; the others still ran
    assert admission.match(keys, b"sk-alic") is None


def test_the_default_bound_is_two_batches_shared_among_the_workers():
    assert admission.default_max_in_flight(8, 1) == 16
    assert admission.default_max_in_flight(8, 3) == 6
    assert admission.default_max_in_flight(1, 4) == 1


class Slow:
    """An app whose generation requests wait until released, naming the key that let them in."""

    def __init__(self):
        self.release = asyncio.Event()

    async def generate(self, request: Request) -> JSONResponse:
        await request.body()
        await self.release.wait()
        return JSONResponse({"key": request.state.api_key_name})

    async def health(self, _request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    def app(self, limits: Limits) -> httpx.AsyncClient:
        routes = [Route("/v1/completions", self.generate, methods=["POST"]),
                  Route("/v1/models", self.generate, methods=["GET"]),
                  Route("/health/ready", self.health, methods=["GET"])]
        app = Starlette(routes=routes, exception_handlers={ApiError: api_error})
        return httpx.AsyncClient(transport=httpx.ASGITransport(Admission(app, limits)), base_url="http://gateway")


def test_keys_401_in_openais_shape_and_the_matched_name_reaches_the_request():
    slow = Slow()
    slow.release.set()

    async def run():
        async with slow.app(Limits({"alice": b"sk-alice"})) as client:
            missing = await client.get("/v1/models")
            wrong = await client.get("/v1/models", headers={"Authorization": "Bearer sk-alicf"})
            basic = await client.get("/v1/models", headers={"Authorization": "Basic sk-alice"})
            right = await client.get("/v1/models", headers={"Authorization": "Bearer sk-alice"})
            health = await client.get("/health/ready")
        return missing, wrong, basic, right, health

    missing, wrong, basic, right, health = asyncio.run(run())
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        assert refused.json()["error"]["type"] == "invalid_request_error" and refused.json()["error"]["param"] is None
    assert "didn't provide" in missing.json()["error"]["message"]
    assert "Incorrect API key" in wrong.json()["error"]["message"]
    assert right.status_code == 200 and right.json() == {"key": "alice"}
    assert health.status_code == 200  # the kubelet and the load balancer carry no key


def test_without_keys_every_request_is_anonymous():
    slow = Slow()
    slow.release.set()

    async def run():
        async with slow.app(Limits({})) as client:
            return await client.post("/v1/completions", content=b"{}")

    answer = asyncio.run(run())
    assert answer.status_code == 200 and answer.json() == {"key": "anonymous"}


def test_beyond_the_bound_a_429_comes_at_once_and_a_freed_place_is_taken_again():
    slow = Slow()

    async def run():
        async with slow.app(Limits({}, max_in_flight=2)) as client:
            held = [asyncio.create_task(client.post("/v1/completions", content=b"{}")) for _ in range(2)]
            await asyncio.sleep(0.1)
            shed = await asyncio.wait_for(client.post("/v1/completions", content=b"{}"), 1)
            health = await asyncio.wait_for(client.get("/health/ready"), 1)
            slow.release.set()
            answers = await asyncio.gather(*held)
            again = await client.post("/v1/completions", content=b"{}")
        return shed, health, answers, again

    shed, health, answers, again = asyncio.run(run())
    assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["code"] == "rate_limit_exceeded"
    assert health.status_code == 200
    assert [a.status_code for a in answers] == [200, 200] and again.status_code == 200


def test_a_body_over_the_cap_is_a_413_with_or_without_a_content_length():
    slow = Slow()
    slow.release.set()

    async def chunks():
        for _ in range(3):
            yield b"x" * 600

    async def run():
        async with slow.app(Limits({}, max_body_bytes=1000)) as client:
            declared = await client.post("/v1/completions", content=b"x" * 1001)
            chunked = await client.post("/v1/completions", content=chunks())
            fits = await client.post("/v1/completions", content=b"x" * 1000)
        return declared, chunked, fits

    declared, chunked, fits = asyncio.run(run())
    for refused in (declared, chunked):
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
    assert fits.status_code == 200


def test_a_secret_created_changed_or_deleted_after_start_takes_effect_without_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(admission, "KEYS_REFRESH_SECONDS", 0.0)
    slow = Slow()
    slow.release.set()
    folder = tmp_path / "keys"
    folder.mkdir()  # the optional Secret's volume before the Secret exists: an empty folder

    async def ask(client: httpx.AsyncClient, key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return (await client.get("/v1/models", headers=headers)).status_code

    async def run():
        async with slow.app(Limits({}, keys_dir=folder)) as client:
            statuses = [await ask(client, None)]
            (folder / "alice").write_text("sk-alice")
            statuses += [await ask(client, None), await ask(client, "sk-alice")]
            (folder / "alice").write_text("sk-alice-2")  # rotated
            statuses += [await ask(client, "sk-alice"), await ask(client, "sk-alice-2")]
            (folder / "alice").write_text("sk bad")  # a broken update keeps the keys that worked
            statuses += [await ask(client, None), await ask(client, "sk-alice-2")]
        return statuses

    assert asyncio.run(run()) == [200, 401, 200, 401, 200, 401, 200]
