"""What a run leaves besides the images: one side-by-side image per prompt (variants as columns, entities
named), report.html (one file, no external resources; images by relative path) and scores.csv."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from .judges import tallies
from .manifest import write_atomic
from .prompts import Row
from .runner import slug

PAD, LABEL = 8, 18


def side_by_side(out: Path, row: Row, variants: list[str], done: dict) -> str | None:
    from PIL import Image, ImageDraw  # Pillow ships with ComfyUI; imported only when a report is built

    cells = [(name, done.get(f"{row.id}|{name}")) for name in variants]
    images = [(name, Image.open(out / r["images"][0]).convert("RGB")) for name, r in cells if r]
    if not images:
        return None
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    w = max(max(i.width, measure(name)) for name, i in images)
    h = max(i.height for _, i in images)
    footer = [row.clean, f"entities: {', '.join(row.entities) or '-'}   seed: {row.seed}"]
    width = max(PAD + len(images) * (w + PAD), PAD * 2 + max(measure(line) for line in footer))
    sheet = Image.new("RGB", (int(width), LABEL + h + PAD + LABEL * len(footer) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for col, (name, image) in enumerate(images):
        x = int(PAD + col * (w + PAD))
        draw.text((x, 3), name, fill="black")
        sheet.paste(image, (x, LABEL))
    for i, line in enumerate(footer):
        draw.text((PAD, LABEL + h + PAD + i * LABEL), line, fill="black")
    path = out / "side_by_side" / f"{slug(row.id)}.png"
    path.parent.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG")
    write_atomic(path, buffer.getvalue())
    return path.relative_to(out).as_posix()


def _score_fields(result: dict) -> dict:
    judge = result.get("judge") or {}
    fields = {"leak": judge.get("leak"), "judge_error": judge.get("error", "")}
    score = judge.get("score")
    if isinstance(score, dict):
        fields.update({f"score.{k}": json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in score.items()})
    elif score is not None:
        fields["score"] = score
    if "answers" in judge:
        fields["answers"] = " | ".join(f"{a['question']} -> {a['answer']}" for a in judge["answers"])
    return fields


def scores_csv(out: Path, rows: list[Row], variants: list[str], done: dict) -> None:
    lines = []
    for row in rows:
        for name in variants:
            result = done.get(f"{row.id}|{name}")
            if result:
                lines.append({"id": row.id, "prompt": row.prompt, "entities": ", ".join(row.entities),
                              "seed": row.seed, "variant": name, "image": result["images"][0],
                              **_score_fields(result)})
    columns = list(dict.fromkeys(k for line in lines for k in line))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns or ["id"])
    writer.writeheader()
    writer.writerows(lines)
    write_atomic(out / "scores.csv", buffer.getvalue().encode())


SCRIPT = """
const rows = [...document.querySelectorAll('#results tbody tr')];
document.getElementById('filter').addEventListener('input', (e) => {
  const q = e.target.value.toLowerCase();
  rows.forEach((r) => { r.hidden = !r.dataset.text.includes(q); });
});
document.querySelectorAll('#results th[data-key]').forEach((th) => th.addEventListener('click', () => {
  const key = th.dataset.key, up = th.dataset.dir !== 'up';
  th.dataset.dir = up ? 'up' : 'down';
  const value = (r) => r.dataset[key] ?? '';
  rows.sort((a, b) => (up ? 1 : -1) * value(a).localeCompare(value(b), undefined, {numeric: true}));
  rows.forEach((r) => r.parentNode.appendChild(r));
}));
"""
STYLE = ("body{font-family:sans-serif;margin:1em}img{max-width:256px;display:block}td,th{border:1px solid #ccc;"
         "padding:4px;vertical-align:top}th[data-key]{cursor:pointer}table{border-collapse:collapse}")


def _verdict(result: dict | None) -> str:
    if not result or "judge" not in result:
        return ""
    judge = result["judge"]
    if judge.get("error"):
        return f"judge error: {judge['error']}"
    leak = judge.get("leak")
    score = judge.get("score")
    text = {True: "leak", False: "no leak", None: "undecided"}[leak]
    return text + (f" {json.dumps(score)}" if score is not None else "")


def html_report(out: Path, rows: list[Row], variants: list[str], done: dict, notes: dict, title: str) -> None:
    e = html.escape
    tally = tallies(done, variants, len(rows))
    head = "".join(f"<th>{e(v)}</th>" for v in variants)
    summary = "".join(
        f"<tr><td>{e(v)}</td><td>{t['results']}/{t['prompts']}</td><td>{t['leak']}</td><td>{t['no leak']}</td>"
        f"<td>{t['undecided']}</td><td>{e('; '.join(notes.get(v, [])))}</td></tr>" for v, t in tally.items())
    body = []
    for row in rows:
        cells = []
        for v in variants:
            result = done.get(f"{row.id}|{v}")
            img = f'<img src="{e(result["images"][0])}" alt="{e(v)}" loading="lazy">' if result else "missing"
            cells.append(f"<td>{img}<div class=verdict>{e(_verdict(result))}</div></td>")
        text = f"{row.id} {row.prompt} {' '.join(row.entities)}".lower()
        leaks = sum((done.get(f"{row.id}|{v}", {}).get("judge") or {}).get("leak") is True for v in variants)
        body.append(f'<tr data-id="{e(row.id)}" data-prompt="{e(row.clean)}" data-seed="{row.seed}" '
                    f'data-leaks="{leaks}" data-text="{e(text)}"><td>{e(row.id)}</td><td>{e(row.prompt)}<br>'
                    f"<small>entities: {e(', '.join(row.entities) or '-')}</small></td><td>{row.seed}</td>"
                    f"<td>{leaks}</td>{''.join(cells)}</tr>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{e(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{e(title)}</h1><h2>Judge tallies</h2><table id=tallies><tr><th>variant</th>"
            "<th>results</th><th>leak</th><th>no leak</th><th>undecided or not judged</th><th>notes</th></tr>"
            f"{summary}</table><h2>Results</h2><p><input id=filter placeholder='filter by prompt, id or entity' "
            "size=40> Click a column header to sort.</p><table id=results><thead><tr><th data-key=id>id</th>"
            "<th data-key=prompt>prompt</th><th data-key=seed>seed</th><th data-key=leaks>leaks</th>"
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table><script>{SCRIPT}</script></body></html>")
    write_atomic(out / "report.html", page.encode())


def build(out: Path, rows: list[Row], variants: list[str], done: dict, notes: dict, title: str) -> None:
    for row in rows:
        side_by_side(out, row, variants, done)
    scores_csv(out, rows, variants, done)
    html_report(out, rows, variants, done, notes, title)
