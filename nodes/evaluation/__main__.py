"""A/B evaluation over a prompt set: every prompt x every workflow variant, queued over ComfyUI servers.

Run from ComfyUI's custom_nodes/ folder (the pack is the package `leakless`), with one or more servers running:

    python -m leakless.nodes.evaluation leakless/nodes/evaluation/examples/slim_style.jsonl \\
        leakless/examples_workflows/flux_deleaker.json --server 127.0.0.1:8188 --server 127.0.0.1:8189 \\
        --variants off,saved --sweep DeLeaker.alpha=1.0,1.5 --out eval-deleaker

Prompt sets: .jsonl or .csv rows with prompt (entities may be marked **cow**), entities, seed, id (all but
prompt optional), or .txt with one prompt per line; missing seeds are generated from --seed and recorded.
Variants: 'off' bypasses the workflow's Leakless nodes as the UI's bypass does, 'saved' runs it as saved, each
--sweep value is 'saved' with that input changed. The same command again resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse
from pathlib import Path

from . import checks, judges, prompts, report, workflow
from .errors import EvaluationError
from .manifest import Manifest
from .manifest import existing as existing_manifest


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m leakless.nodes.evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", help="prompt set: .jsonl, .csv (SLIM-style rows) or .txt (one prompt per line)")
    p.add_argument("workflow", help="workflow with Leakless nodes, UI or API format")
    p.add_argument("--server", action="append", required=True, metavar="HOST:PORT",
                   help="a ComfyUI server; repeat for more (one per GPU)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest, images, report)")
    p.add_argument("--variants", default="off,saved", help="comma-separated: off, saved (default both)")
    p.add_argument("--sweep", action="append", default=[], metavar="NODE.INPUT=V1,V2",
                   help="one variant per value (several --sweep: every combination); NODE is an id, title or type")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=V",
                   help="change an input in every variant (e.g. EmptySD3LatentImage.width=512)")
    p.add_argument("--seed", type=int, default=0, help=f"generates the seeds rows lack (0 to {prompts.MAX_SEED}, "
                   "default 0)")
    p.add_argument("--limit", type=int, default=0, help="only the first N prompts (0, the default: all)")
    judge = p.add_mutually_exclusive_group()
    judge.add_argument("--judge-command", metavar="CMD",
                       help="reads {image, row, variant} as JSON on stdin, prints a JSON score ({\"leak\": true} "
                       "is tallied)")
    judge.add_argument("--judge-graph", metavar="FILE", help="ComfyUI graph: one LoadImage, {question} in a text "
                       "input, answer from its text output (titled 'Answer' if several)")
    p.add_argument("--jobs-per-server", type=int, default=2, help="jobs kept queued on each server (1 to 64, "
                   "default 2)")
    p.add_argument("--retries", type=int, default=1, help="reruns of a job the server failed (0 to 100, default 1)")
    p.add_argument("--give-up-after", type=float, default=300, metavar="S",
                   help="stop when no server has answered for S seconds (0 to 86400, default 300)")
    return p


# option: (smallest, largest or None); every numeric option has a range, so no value can hang or exhaust the run
RANGES = {"seed": (0, prompts.MAX_SEED), "limit": (0, None), "jobs_per_server": (1, 64), "retries": (0, 100),
          "give_up_after": (0, 86400)}


def check_options(args) -> None:
    """Refuse an option out of range (NaN included) or a server address that cannot be one, before anything."""
    for name, (low, high) in RANGES.items():
        value = getattr(args, name)
        if not (low <= value and (high is None or value <= high)):
            flag = "--" + name.replace("_", "-")
            raise EvaluationError(flag, f"{value} is out of range.", f"give a number from {low}" +
                                  (f" to {high}." if high is not None else " up."))
    for address in args.server:
        url = address if "://" in address else "http://" + address
        try:
            parts = urllib.parse.urlsplit(url)
            ok = parts.scheme in ("http", "https") and parts.hostname and parts.port is not None
        except ValueError:
            ok = False
        if not ok:
            raise EvaluationError(f"--server {address}", "not a server address.", "write HOST:PORT, e.g. "
                                  "127.0.0.1:8188 (port 1 to 65535).")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise EvaluationError(f"--out {args.out}", "it is a file.", "give a folder (new, or of a run to resume).")


class Progress:
    def __init__(self, stream=sys.stderr, width=30):
        self.stream, self.width, self.last = stream, width, 0.0
        self.tty = stream.isatty()

    def __call__(self, run, final=False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        done = len(run.manifest.done)
        new = done - run.done_before
        left = run.total - done - len(run.failed)
        eta = (now - run.started) / new * left if new else None
        bar = "#" * int(self.width * done / max(run.total, 1))
        up = len(run.servers) - len(run.down)
        text = (f"[{bar:<{self.width}}] {done}/{run.total}  failed {len(run.failed)}  servers up {up}/"
                f"{len(run.servers)}  ETA {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta is not None else '?'}")
        self.stream.write(("\r" + text) if self.tty and not final else text + "\n")
        self.stream.flush()


async def _main(args) -> int:
    import aiohttp

    from .client import Server, probe
    from .runner import Run

    rows = prompts.load(args.prompts, args.seed)[: args.limit or None]
    workflow.read(args.workflow)
    if args.judge_graph:
        workflow.read(args.judge_graph)
    out = Path(args.out)
    existing_manifest(out)
    async with aiohttp.ClientSession() as session:
        servers = [Server(url, session) for url in dict.fromkeys(args.server)]
        infos = await probe(servers)
        graph = workflow.load(args.workflow, infos[0])
        for server, info in zip(servers[1:], infos[1:], strict=True):
            missing = sorted({n["class_type"] for n in graph.values()} - set(info))
            if missing:
                raise EvaluationError(server.url, f"it lacks the node types {missing}.", "install the same packs "
                                      "on every server.")
        workflow.check_targets(graph, args.workflow)
        variants = workflow.variants(graph, infos[0], [v for v in args.variants.split(",") if v], args.sweep,
                                     args.set)
        checks.check_rows(rows, variants, f"{Path(args.prompts).name} with {Path(args.workflow).name}")
        judge = None
        if args.judge_command:
            judge = judges.CommandJudge(args.judge_command)
        elif args.judge_graph:
            judge = judges.GraphJudge(workflow.load(args.judge_graph, infos[0]))
        plan = {"rows": [r.as_dict() for r in rows], "variants": {v.name: v.graph for v in variants},
                "judge": args.judge_command or args.judge_graph or None}
        manifest = Manifest(out, plan)
        manifest.save()
        for v in variants:
            for note in v.notes:
                print(f"variant {v.name}: {note}", file=sys.stderr)
        progress = Progress()
        run = Run(out, rows, variants, servers, manifest, judge, args.jobs_per_server, args.retries,
                  args.give_up_after, progress)
        try:
            await run.execute()
        finally:
            progress(run, final=True)
            names = [v.name for v in variants]
            report.build(out, rows, names, manifest.done, {v.name: v.notes for v in variants},
                         f"{Path(args.workflow).name} x {Path(args.prompts).name}")
    for key, error in sorted(run.failed.items()):
        print(f"failed {key}: {error}", file=sys.stderr)
    print(f"{len(manifest.done)}/{run.total} results in {out} (report.html, scores.csv, side_by_side/)")
    return 1 if run.failed else 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_options(args)
        return asyncio.run(_main(args))
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
