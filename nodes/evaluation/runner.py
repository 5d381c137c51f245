"""The scheduler: every (prompt, variant) job over the servers, a server's lost jobs requeued on the others,
each finished job recorded once in the manifest, images and judge verdict first."""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import workflow
from .client import JobFailed, JobRefused, Server, ServerGone
from .errors import EvaluationError
from .manifest import Manifest, write_atomic
from .prompts import Row

RECONNECT_EVERY = 1.0


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "_"


@dataclass
class Job:
    row: Row
    variant: workflow.Variant
    attempts: int = 0

    @property
    def key(self) -> str:
        return f"{self.row.id}|{self.variant.name}"


class Run:
    def __init__(self, out: Path, rows: list[Row], variants: list[workflow.Variant], servers: list[Server],
                 manifest: Manifest, judge=None, jobs_per_server: int = 2, retries: int = 1, give_up_after=300.0,
                 on_progress=None):
        self.out, self.rows, self.variants, self.servers = out, rows, variants, servers
        self.manifest, self.judge = manifest, judge
        self.jobs_per_server, self.retries, self.give_up_after = jobs_per_server, retries, give_up_after
        self.on_progress = on_progress or (lambda run: None)
        self.queue = deque(Job(r, v) for r in rows for v in variants if f"{r.id}|{v.name}" not in manifest.done)
        self.total = len(rows) * len(variants)
        self.in_flight: dict[str, tuple[Server, Job]] = {}
        self.failed: dict[str, str] = {}
        self.down: dict[str, float] = {}
        self.started, self.done_before = time.monotonic(), len(manifest.done)
        self.fatal: Exception | None = None

    @property
    def finished(self) -> bool:
        return not self.queue and not self.in_flight

    async def execute(self) -> None:
        workers = [asyncio.create_task(self._worker(s)) for s in self.servers for _ in range(self.jobs_per_server)]
        try:
            while not self.finished and self.fatal is None:
                if self.down and len(self.down) == len(self.servers):
                    since = min(self.down.values())
                    if time.monotonic() - since > self.give_up_after:
                        self.fatal = EvaluationError("servers", f"none answered for {self.give_up_after:.0f} s.",
                                                     "start them and run the same command again: it resumes.")
                await asyncio.sleep(0.1)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for server in self.servers:
                await server.close()
        if self.fatal:
            raise self.fatal

    async def _worker(self, server: Server) -> None:
        while True:
            if server.url in self.down and not await self._reconnect(server):
                await asyncio.sleep(RECONNECT_EVERY)
                continue
            if not self.queue:
                await asyncio.sleep(0.1)
                continue
            job = self.queue.popleft()
            self.in_flight[job.key] = (server, job)
            try:
                await self._run(server, job)
            except ServerGone as e:
                self.queue.appendleft(job)
                if server.url not in self.down:
                    self.down[server.url] = time.monotonic()
                    self.manifest.event(f"{server.url} lost ({e}); its jobs requeued")
                await server.close()
            except JobRefused as e:
                self.fatal = EvaluationError(f"{server.url} /prompt", f"the server refused job {job.key}: {e}",
                                             "fix the workflow or the settings; the run resumes where it stopped.")
            except JobFailed as e:
                job.attempts += 1
                if job.attempts > self.retries:
                    self.failed[job.key] = str(e)
                else:
                    self.queue.append(job)
            except OSError as e:  # the results cannot be written: stop, keep the job for the resumed run
                self.queue.appendleft(job)
                self.fatal = EvaluationError(str(self.out), f"cannot write job {job.key}'s results "
                                             f"({e.strerror or e}: {e.filename or ''}).", "free space or fix "
                                             "permissions there, then run the same command again: it resumes.")
            except Exception as e:  # noqa: BLE001 - a bug must stop the run loudly, never drop the job unseen
                self.queue.appendleft(job)
                self.fatal = EvaluationError(f"job {job.key}", f"the runner failed ({e.__class__.__name__}: {e}).",
                                             "report it with this line; the same command resumes the run.")
            finally:
                self.in_flight.pop(job.key, None)
                self.on_progress(self)

    async def _reconnect(self, server: Server) -> bool:
        try:
            await server.object_info()
            await server.connect()
        except ServerGone:
            return False
        since = self.down.pop(server.url, None)
        if since is not None:
            self.manifest.event(f"{server.url} back after {time.monotonic() - since:.1f} s")
        return True

    async def _run(self, server: Server, job: Job) -> None:
        prefix = f"leakless_eval/{slug(self.out.name)}/{slug(job.row.id)}/{slug(job.variant.name)}"
        started = time.monotonic()
        outputs = await server.run(workflow.job_graph(job.variant.graph, job.row, prefix))
        images = []
        folder = self.out / "images" / slug(job.row.id)
        folder.mkdir(parents=True, exist_ok=True)
        for node_id in sorted(outputs, key=lambda k: (len(k), k)):
            for i, image in enumerate(outputs[node_id].get("images", [])):
                path = folder / f"{slug(job.variant.name)}_{slug(node_id)}_{i}.png"
                write_atomic(path, await server.download(image))
                images.append(path.relative_to(self.out).as_posix())
        if not images:
            raise JobFailed("the workflow saved no image (add a SaveImage node)")
        result = {"row": job.row.id, "variant": job.variant.name, "seed": job.row.seed, "images": images,
                  "server": server.url, "seconds": round(time.monotonic() - started, 3)}
        if self.judge is not None:
            result["judge"] = await self.judge(server, self.out / images[0], job.row, job.variant.name)
        if job.key not in self.manifest.done:
            self.manifest.record(job.key, result)
            self.failed.pop(job.key, None)
