"""The report page: outputs/index.html, one section per task run that wrote to it (its
findings, every figure, its settings), and the command for each task not run yet. Plain
HTML and CSS with relative links, so it works opened from disk."""
from __future__ import annotations

import html
import json
import re
from datetime import datetime
from pathlib import Path

from .store import fmt, write_atomic

# The report page's sections, in the order of the scripts, with the assignment's own
# numbering (it calls the VAE part 4 and CLIP part 5).
TASK_TITLES = {
    "task1": "Task1.py: ResNet-152 on CIFAR-10 (assignment part 1)",
    "task2": "Task2.py: Vision Transformer ViT-B/16 (assignment part 2)",
    "task3": "Task3.py: MLP GAN on MNIST (assignment part 3)",
    "task4": "Task4.py: CLIP ViT-B/32 on STL-10 (assignment part 5)",
    "task5": "Task5.py: convolutional VAE on FashionMNIST (assignment part 4)",
}
SMOKE_NOTE = ("smoke: small random models on generated or stand-in data; these numbers say nothing about the "
              "real models")
# Beside index.html: the run folders that wrote to the page (a JSON list of names). Only
# these get a section, so `--out /tmp/x/task5` does not collect whatever else lies in /tmp/x.
RUNS_FILE = "index.runs.json"
# A figure this much wider than tall (multi-panel rows) is shown at the page's full width:
# at half width its text cannot be read.
WIDE = 1.6

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1150px;margin:1.5em auto;padding:0 1em;color:#222}
nav a{margin-right:1.2em} section{border-top:3px solid #ccd;margin-top:2.2em;padding-top:.3em}
.meta{color:#555;font-size:.9em} .finding{background:#f5f7fa;border-left:4px solid #3b6fd8;
padding:.4em 1em;margin:.7em 0} .finding h4{margin:.3em 0} .todo{color:#888;font-style:italic}
.finding ul{margin:.3em 0;font-size:.9em;color:#333} figure{display:inline-block;vertical-align:top;
margin:.4em;width:47%} figure.wide{width:98%} figure img{width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555}
code{background:#eef;padding:0 .25em;border-radius:3px} table{border-collapse:collapse;font-size:.85em}
td{border:1px solid #ddd;padding:1px 6px} details{margin:.4em 0}
.smoke{background:#fff3cd;border:1px solid #e0c060;padding:.3em .8em;font-weight:600}
@media (max-width:800px){figure{width:100%}}
"""


def figures_by_experiment(folder: Path, names: list[str]) -> dict[str, list[str]]:
    """{experiment: its PNG file names}: a figure belongs to the longest experiment
    name that prefixes it ("gap_shift_x.png" -> gap_shift, not gap)."""
    by_length = sorted(names, key=len, reverse=True)
    out: dict[str, list[str]] = {}
    for png in sorted(p.name for p in Path(folder).glob("*.png")):
        owner = next((n for n in by_length if png.startswith(n + "_")), None)
        if owner is not None:
            out.setdefault(owner, []).append(png)
    return out


def report_page(out: str | Path) -> Path:
    """Where a run with --out `out` writes the report page: index.html beside `out`
    (outputs/index.html for the default outputs/taskN), one section per run that wrote there."""
    return Path(out).absolute().parent / "index.html"


def _is_wide(png: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(png) as im:
            return im.width > WIDE * im.height
    except (OSError, ValueError):
        return False


def _text(text: str) -> str:
    """Escape, then `code` spans (findings and evidence use backticks as in markdown)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _runs(root: Path, run: str | None) -> list[tuple[int, str, dict]]:
    """(position in TASK_TITLES, folder name, metrics.json) of every task run registered in
    root/RUNS_FILE, `run` added to it; names whose metrics.json is gone are dropped."""
    try:
        names = json.loads((root / RUNS_FILE).read_text())
        names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    except (OSError, ValueError):
        names = []
    runs = []
    for name in dict.fromkeys(names + ([run] if run else [])):
        try:
            doc = json.loads((root / name / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("task") in TASK_TITLES:
            runs.append((list(TASK_TITLES).index(doc["task"]), name, doc))
    runs.sort(key=lambda r: (r[0], r[1]))
    write_atomic(root / RUNS_FILE, json.dumps([name for _, name, _ in runs]) + "\n")
    return runs


def _seeds(config: dict) -> str:
    """'seed 0', or 'seeds 0, 1, 2' for a --seeds run (harness/seeds.py)."""
    many = config.get("seeds")
    return f"seeds {', '.join(map(str, many))}" if isinstance(many, list) else f"seed {config.get('seed')}"


def _section(root: Path, name: str, doc: dict) -> list[str]:
    """One task run: title, run line, settings, findings, then every figure in run order."""
    env, cfg, q = doc.get("env", {}), doc.get("config", {}), html.escape(name)
    smoke = env.get("data") == "smoke"
    body = [f'<section id="{q}"><h2>{html.escape(TASK_TITLES[doc["task"]])}'
            + (f" <small>({q})</small>" if name != doc["task"] else "") + (" <small>[smoke]</small>" if smoke else "")
            + "</h2>",
            f"<p class=meta>run {html.escape(str(env.get('date', '?')))} &middot; "
            f"{html.escape(_seeds(cfg))} &middot; data {html.escape(str(env.get('data')))} &middot; device "
            f"{html.escape(str(env.get('device')))} &middot; torch {html.escape(str(env.get('torch')))} &middot; "
            f"commit {html.escape(str(env.get('git_commit')))} &middot; <a href=\"{q}/summary.md\">summary.md</a> "
            f"&middot; <a href=\"{q}/metrics.json\">metrics.json</a></p>",
            *([f"<p class=smoke>{html.escape(SMOKE_NOTE)}.</p>"] if smoke else []),
            "<details><summary>settings</summary><table>" + "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(fmt(v))}</td></tr>" for k, v in cfg.items())
            + "</table></details>"]
    for f in doc.get("findings", []):
        body.append(f"<div class=finding><h4>{_text(f['ref'])}. {_text(f['ask'])}</h4>")
        if "todo" in f:
            body.append(f"<p class=todo>{_text(f['todo'])}</p></div>")
            continue
        body.append(f"<p><b>Finding.</b> {_text(f['finding'])}</p><ul>"
                    + "".join(f"<li>{_text(ev)}</li>" for ev in f["evidence"])
                    + "".join(f'<li>figure: <a href="#{q}-{html.escape(p)}">{html.escape(p)}</a></li>'
                              for p in f["figures"]) + "</ul></div>")
    figs = figures_by_experiment(root / name, list(doc.get("experiments", {})))
    for exp in (e for e in doc.get("experiments", {}) if e in figs):  # in run order
        body.append(f"<h3>{html.escape(exp)}</h3>")
        body += [f'<figure id="{q}-{html.escape(p)}"{" class=wide" if _is_wide(root / name / p) else ""}>'
                 f'<a href="{q}/{html.escape(p)}"><img loading=lazy src="{q}/{html.escape(p)}" alt="{html.escape(p)}">'
                 f"</a><figcaption>{html.escape(p)}</figcaption></figure>" for p in figs[exp]]
    return body + ["</section>"]


def write_report(root: Path, run: str | None = None) -> Path:
    """(Re)write root/index.html: a section for the run folder `run` (a name in root) and
    for every run that wrote there before; rewritten after every experiment."""
    root = Path(root)
    runs = _runs(root, run)
    body = [f"<h1>Experiment report</h1><p class=meta>Written {datetime.now().isoformat(timespec='seconds')} "
            f"from the runs written to <code>{html.escape(str(root))}</code>. Each section answers the "
            "assignment's questions from that run's numbers, then shows every figure.</p><nav>"]
    body += [f'<a href="#{html.escape(name)}">{html.escape(name)}</a>' for _, name, _ in runs] + ["</nav>"]
    for _, name, doc in runs:
        body += _section(root, name, doc)
    done = {doc["task"] for _, _, doc in runs}
    for task, title in TASK_TITLES.items():
        if task not in done:
            body.append(f'<section id="{task}"><h2>{html.escape(title)}</h2><p class=todo>not run yet: '
                        f"<code>python {task.capitalize()}.py</code> (or <code>--smoke</code> to try it in "
                        "seconds)</p></section>")
    page = ("<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>Experiment report</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    write_atomic(root / "index.html", page)
    return root / "index.html"
