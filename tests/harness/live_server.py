"""The real ComfyUI server (main.py) on 127.0.0.1 with the pack in custom_nodes, and a tiny HTTP client for it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import comfy_env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base=comfy_env.BASE, log_path=None, extra_args=()):
        self.base = comfy_env.prepare_base(base)
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or (comfy_env.CACHE / "server.log")
        self.proc = None

    def start(self, timeout=120):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--disable-auto-launch", "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
             *self.extra_args],
            cwd=comfy_env.COMFY_DIR, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s; see {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    def kill(self):
        """SIGKILL by PID, as a crash would end it; start() brings it back on the same port."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def request(self, path, data=None, method=None):
        body = None if data is None else (data if isinstance(data, bytes) else json.dumps(data).encode())
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback only
            raw = r.read()
        return json.loads(raw) if raw else None

    def get(self, path):
        return self.request(path)

    def queue(self, prompt):
        """POST /prompt; returns the prompt id. Raises with the server's JSON error on a 400."""
        try:
            return self.request("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"/prompt refused the graph: {e.read().decode()}") from None

    def wait(self, prompt_id, timeout=300):
        """Poll /history until the prompt finished; returns its history entry (asserts success)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                assert status["status_str"] == "success", errors or status
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt, timeout=300):
        return self.wait(self.queue(prompt), timeout)["outputs"]
