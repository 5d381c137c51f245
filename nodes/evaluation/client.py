"""One ComfyUI server over its HTTP API and websocket (aiohttp, which ComfyUI itself requires)."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp

from .errors import EvaluationError

TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=5)


class ServerGone(Exception):
    """The server stopped answering: its jobs go back to the queue."""


class NotComfyUI(ServerGone):
    """The server answered, but not as ComfyUI's API does (another program on that port, a proxy's error page)."""


IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"GIF8")


def _expect(ok: bool, url: str, what: str, body) -> None:
    if not ok:
        raise NotComfyUI(f"{url} answered with {what}: {str(body)[:120]!r}")


class JobFailed(Exception):
    """The server ran the job and reported an error."""


class JobRefused(JobFailed):
    """/prompt refused the graph (validation): every job of the run would be refused the same way."""


class Server:
    def __init__(self, url: str, session: aiohttp.ClientSession):
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.session = session
        self.client_id = uuid.uuid4().hex
        self.waiting: dict[str, asyncio.Future] = {}
        self.progress: dict[str, float] = {}
        self.listener: asyncio.Task | None = None

    async def _json(self, method: str, path: str, **kwargs):
        try:
            async with self.session.request(method, self.url + path, timeout=TIMEOUT, **kwargs) as r:
                body = await r.read()
                if r.status == 400 and path == "/prompt":
                    raise JobRefused(_refusal(body))
                if r.status >= 400:
                    raise ServerGone(f"{self.url}{path} answered {r.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as e:
            raise ServerGone(f"{self.url}: {e.__class__.__name__} {e}") from None
        try:
            reply = json.loads(body)
        except (ValueError, RecursionError):
            reply = body[:120]
        _expect(isinstance(reply, dict), self.url + path, "something other than a JSON object", reply)
        return reply

    async def object_info(self) -> dict:
        info = await self._json("GET", "/object_info")
        _expect(bool(info) and all(isinstance(v, dict) and isinstance(v.get("input"), dict)
                                   and isinstance(v.get("output"), list) for v in info.values()),
                self.url + "/object_info", "no node definitions", info)
        return info

    async def connect(self) -> None:
        """Open the websocket (the server's progress and completion messages for our client id)."""
        try:
            ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}", timeout=10, heartbeat=20)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ServerGone(f"{self.url}: {e.__class__.__name__} {e}") from None
        self.listener = asyncio.create_task(self._listen(ws))

    async def _listen(self, ws) -> None:
        try:
            async for msg in ws:
                try:
                    event = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
                except ValueError:
                    event = None
                data = event.get("data") if isinstance(event, dict) else None
                if not isinstance(data, dict):
                    continue
                future = self.waiting.get(data.get("prompt_id"))
                if future is None or future.done():
                    continue
                kind = event.get("type")
                if kind == "progress" and data.get("max"):
                    self.progress[data["prompt_id"]] = data["value"] / data["max"]
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                    future.set_result(None)
                elif kind == "execution_error":
                    future.set_exception(JobFailed(f"{data.get('node_type')} (node {data.get('node_id')}): "
                                                   f"{data.get('exception_message', '').strip()}"))
                elif kind == "execution_interrupted":
                    future.set_exception(JobFailed("interrupted on the server"))
        finally:
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(ServerGone(f"{self.url}: websocket closed"))
            await ws.close()

    @property
    def connected(self) -> bool:
        return self.listener is not None and not self.listener.done()

    async def close(self) -> None:
        if self.listener:
            self.listener.cancel()
            await asyncio.gather(self.listener, return_exceptions=True)

    async def run(self, graph: dict, poll: float = 5.0) -> dict:
        """Queue the graph and wait for it; returns its /history outputs."""
        if not self.connected:
            await self.connect()
        reply = await self._json("POST", "/prompt", json={"prompt": graph, "client_id": self.client_id})
        prompt_id = reply.get("prompt_id")
        _expect(isinstance(prompt_id, str), self.url + "/prompt", "no prompt_id", reply)
        future = self.waiting[prompt_id] = asyncio.get_running_loop().create_future()
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(future), poll)
                except asyncio.TimeoutError:
                    pass  # a missed message: ask /history
                entry = (await self._json("GET", f"/history/{prompt_id}")).get(prompt_id) or {}
                _expect(_is_history(entry), self.url + "/history", "a history entry ComfyUI does not write", entry)
                status = entry.get("status") or {}
                if status.get("completed") is not None:
                    if status.get("status_str") != "success":
                        errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                        raise JobFailed(errors[0].get("exception_message", "failed") if errors else "failed")
                    return entry.get("outputs") or {}
                if future.done():
                    future.result()  # raises the server's error; else history catches up on the next turn
                    await asyncio.sleep(0.05)
        finally:
            self.waiting.pop(prompt_id, None)
            self.progress.pop(prompt_id, None)

    async def download(self, image: dict) -> bytes:
        params = {k: image.get(k, "") for k in ("filename", "subfolder", "type")}
        try:
            async with self.session.get(self.url + "/view", params=params, timeout=TIMEOUT) as r:
                if r.status != 200:
                    raise ServerGone(f"{self.url}/view {params['filename']} answered {r.status}")
                data = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ServerGone(f"{self.url}: {e.__class__.__name__} {e}") from None
        _expect(data.startswith(IMAGE_MAGIC), self.url + "/view", "something other than an image", data[:40])
        return data

    async def upload(self, data: bytes, name: str) -> str:
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="image/png")
        form.add_field("overwrite", "true")
        reply = await self._json("POST", "/upload/image", data=form)
        _expect(isinstance(reply.get("name"), str), self.url + "/upload/image", "no file name", reply)
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]


def _is_history(entry) -> bool:
    outputs = entry.get("outputs") or {} if isinstance(entry, dict) else None
    return (isinstance(outputs, dict) and isinstance(entry.get("status") or {}, dict)
            and all(isinstance(o, dict) and isinstance(o.get("images", []), list)
                    and all(isinstance(i, dict) for i in o.get("images", [])) for o in outputs.values()))


def _refusal(body: bytes) -> str:
    try:
        reply = json.loads(body)
    except json.JSONDecodeError:
        return body.decode(errors="replace")[:500]
    parts = [reply.get("error", {}).get("message", "refused")]
    for node_id, err in (reply.get("node_errors") or {}).items():
        for e in err.get("errors", []):
            parts.append(f"node {node_id} ({err.get('class_type')}): {e.get('message')} {e.get('details', '')}")
    return "; ".join(parts)


async def probe(servers: list[Server]) -> dict:
    """Every server's /object_info (they must all answer, and agree on the nodes the workflow uses)."""
    infos = []
    for server in servers:
        try:
            infos.append(await server.object_info())
        except NotComfyUI as e:
            raise EvaluationError(server.url, f"it answers, but not as ComfyUI does ({e}).",
                                  "check the host and port: --server must name a ComfyUI server.") from None
        except ServerGone as e:
            raise EvaluationError(server.url, f"the server does not answer ({e}).",
                                  "start it (python main.py --listen --port ...) or leave it out of --server."
                                  ) from None
    return infos
