"""The cumulative leaderboard, kept in the repository: `docs/leaderboard.json`.

Run folders live in the trainer's work dir, which does not survive a fresh checkout; the scores of every
configuration tried must. `python -m trainer leaderboard` merges the work dir's freshly evaluated rows
(`<work>/report/leaderboard.json`, from `python -m trainer evaluate`) into the committed file — a
configuration evaluated again replaces its old row, a name re-run with another configuration keeps both —
and rewrites the leaderboard section and plot of `docs/evaluation.md`. `python -m trainer report` uses the
same merged board.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from trainer.evaluation.evaluate import LEADERBOARD_COLUMNS
from trainer.training.grid import load_grid

FILE = "leaderboard.json"
# Each protocol ranks on its own data and validation split, so each keeps its own file: `official` (the original
# dataset's Training/Testing) and `clean` (any data roots, nothing near a Testing image trained on). Pooled runs
# are reported in their own section.
FILES = {"official": FILE, "clean": "leaderboard-clean.json"}
SECTION = "## Leaderboard: every configuration tried"
NEXT_SECTION = "## Provenance"
KEPT = [c for c in LEADERBOARD_COLUMNS if c != "rank"] + [
    "protocol",
    "preprocessing_version",
    "config",
    "data_hash",
    "dataset_hash",
    "source",
]


def slim(row: dict[str, Any]) -> dict[str, Any]:
    """The row without its bulky per-class metrics and machine paths; `source` says where it came from."""
    out = {k: row.get(k) for k in KEPT}
    out["protocol"] = out["protocol"] or "official"
    out["preprocessing_version"] = version = version_of(out)
    if version >= 2 and not str(out["name"]).endswith(f"@v{version}"):  # run names do not say the version
        out["name"] = f"{out['name']}@v{version}"
    out["source"] = out["source"] or f"python -m trainer evaluate, {dt.date.today().isoformat()}"
    return out


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = sorted(rows, key=lambda r: (-r["val_macro_f1"], r["val_loss"] or 0.0, r["name"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def config_tag(config: dict[str, Any]) -> str:
    """A short, stable tag of a configuration (the same config always gives the same tag)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def version_of(row: dict[str, Any]) -> int:
    """The preprocessing version a row's model was trained with (rows from before versioning: 1)."""
    return int(row.get("preprocessing_version") or 1)


def _dataset(row: dict[str, Any]) -> str | None:
    """The images and labels a row was scored on (rows from before dataset_hash: their data_hash)."""
    return row.get("dataset_hash") or row.get("data_hash")


def _retrained(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The same configuration trained again, not re-evaluated: training is not bit-reproducible on a CPU, so
    that is another model, told apart by its recorded training time."""
    return old.get("train_seconds") is not None and old.get("train_seconds") != new.get("train_seconds")


def merge(committed: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Union by model name (rows of preprocessing version ≥ 2 are named `<run name>@v<version>`); a freshly
    evaluated row replaces the committed one of the same configuration. A name re-run with another
    configuration (more epochs, say: run names do not say) keeps the old row as `<name>@<config tag>`, and the
    same configuration trained again keeps it as `<name>@run<k>`, so no configuration or run tried drops out.
    Rows scored on the same images and labels (dataset hash) rank together, whatever their preprocessing.
    Ranked by validation F1."""
    by_name = {r["name"]: r for r in committed}
    hashes = {h for r in committed if (h := _dataset(r))}
    for r in fresh:
        if hashes and _dataset(r) and _dataset(r) not in hashes:
            raise ValueError(
                f"{r['name']} was evaluated on data {str(_dataset(r))[:16]}, the committed leaderboard on "
                f"{', '.join(h[:16] for h in sorted(hashes))}: scores on different data do not rank together"
            )
        new = slim(r)
        old = by_name.get(new["name"])
        if old is not None and old.get("config") and new.get("config") and old["config"] != new["config"]:
            kept = {**old, "name": f"{old['name']}@{config_tag(old['config'])}"}
            kept["source"] = f"{old['source']}; superseded by a run of another configuration under this name"
            by_name[kept["name"]] = kept
        elif old is not None and _retrained(old, new):
            k = next(k for k in itertools.count(1) if f"{old['name']}@run{k}" not in by_name)
            kept = {**old, "name": f"{old['name']}@run{k}"}
            kept["source"] = f"{old['source']}; an earlier training run of this configuration"
            by_name[kept["name"]] = kept
        by_name[new["name"]] = new
    return rank(list(by_name.values()))


def load(docs: Path, protocol: str = "official") -> list[dict[str, Any]]:
    path = docs / FILES[protocol]
    return json.loads(path.read_text()) if path.exists() else []


def save(board: list[dict[str, Any]], docs: Path, protocol: str = "official") -> Path | None:
    """Write the protocol's board (a protocol with no rows writes no file)."""
    if not board and protocol != "official":
        return None
    path = docs / FILES[protocol]
    path.write_text(json.dumps(board, indent=1) + "\n")
    return path


ORIGINAL_GRID = Path(__file__).parent.parent / "grids" / "original.toml"


def grid_coverage(board: list[dict[str, Any]]) -> list[str]:
    """How much of the 2020 project's grid (trainer/grids/original.toml) the leaderboard covers, and how."""
    original = load_grid(ORIGINAL_GRID)
    by_name = {r["name"]: r for r in board}
    lines = ["Coverage of the 2020 project's grid (`trainer/grids/original.toml`):", ""]
    for family in ("ann", "cnn"):
        entries = [e for e in original if e["family"] == family]
        done = [by_name[e["name"]] for e in entries if e["name"] in by_name]
        epochs = sorted({r["epochs_run"] for r in done})
        missing = [e["name"] for e in entries if e["name"] not in by_name]
        one = sum(r["epochs_run"] == 1 for r in done)
        notes = [f"epochs run: {', '.join(map(str, epochs)) or '–'}"]
        if one:
            notes.append(f"{one} trained for one epoch only (CPU time): their scores understate the architecture")
        line = f"- {family.upper()}s: {len(done)} of {len(entries)} trained ({'; '.join(notes)})"
        lines.append(line + (f"; not trained: {', '.join(missing)}" if missing else ""))
    for e in original:
        if e["family"] != "transfer":
            continue
        runs = [r for r in board if r["family"] == "transfer" and r["config"].get("backbone") == e["backbone"]]
        how = "; ".join(f"{r['name']} ({r['weights_origin'].split(':')[0]})" for r in runs) or "not trained"
        lines.append(f"- {e['backbone']} (ImageNet download unreachable here): {how}")
    return lines


TABLE_HEAD = [
    "| # | model | prep. | params | epochs | train s | aug | val acc | val F1 | test acc | test F1 | "
    "test glioma recall |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _table(board: list[dict[str, Any]]) -> list[str]:
    return [
        *TABLE_HEAD,
        *(
            f"| {i} | {r['name']} | v{version_of(r)} | {r['params']:,} | {r['epochs_run']} | "
            f"{r['train_seconds']:.0f} | {'yes' if r['augment'] else 'no'} | {r['val_accuracy']:.3f} | "
            f"{r['val_macro_f1']:.3f} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
            f"{r['test_glioma_recall']:.3f} |"
            for i, r in enumerate(board, 1)
        ),
    ]


def clean_section(board: list[dict[str, Any]]) -> list[str]:
    """The protocol-clean models (`docs/leaderboard-clean.json`), a table of their own."""
    if not board:
        return []
    return [
        "### Protocol clean: every data root, nothing near a Testing image",
        "",
        f"{len(board)} models trained on every data root given to `trainer train` under protocol `clean`, ranked by",
        "validation macro-F1. Their validation split is carved from all roots, so these scores do not rank with",
        "the table above; a run named `no-<source>` left that source out of training and validation (its",
        "cross-source score is in the generalisation section). Test: the official Testing split, none of whose",
        "images has an exact or near copy among these models' training images.",
        "",
        *_table(board),
        "",
    ]


def section(board: list[dict[str, Any]], clean: list[dict[str, Any]] | None = None) -> list[str]:
    """The leaderboard section of docs/evaluation.md (without the section after it)."""
    lines = [
        SECTION,
        "",
        f"{len(board)} models, ranked by validation macro-F1. Training time is wall-clock on a shared 2-core CPU.",
        "All rows are in `docs/leaderboard.json` (with each configuration and where the row came from: rows",
        "trained on different days ran on different 2-core machines, so compare training times within a day). The",
        "export chooses its voters among the 8 best rows by validation macro-F1; a row added after the shipped",
        "ensemble was exported could change that choice only by ranking among them. prep.: the preprocessing",
        "version the model was trained and scored with (v1: crop and resize; v2: intensity normalisation first).",
        "",
        *grid_coverage(board),
        "",
        *_table(board),
    ]
    return [*lines, "", "![leaderboard](img/leaderboard.png)", "", *clean_section(clean or [])]


def update_docs(
    board: list[dict[str, Any]],
    docs: Path,
    clean: list[dict[str, Any]] | None = None,
    other_data: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """Replace the leaderboard section of docs/evaluation.md (the boards, as `trainer report` renders them) and
    redraw docs/img/leaderboard.png."""
    from trainer.evaluation.plots import plot_leaderboard

    report = docs / "evaluation.md"
    text = report.read_text()
    start, end = text.find(SECTION), text.find(NEXT_SECTION)
    if start < 0 or end < start:
        raise ValueError(f"{report}: no '{SECTION}' section followed by '{NEXT_SECTION}'")
    lines = [*section(board, clean), *other_data_section(other_data or {})]
    report.write_text(text[:start] + "\n".join(lines) + "\n" + text[end:])
    (docs / "img").mkdir(exist_ok=True)
    plot_leaderboard(board, docs / "img" / "leaderboard.png")
    return report


def merged(work: Path, docs: Path, protocol: str = "official") -> list[dict[str, Any]]:
    """The protocol's committed board (FILES) with that protocol's rows of <work>/report/leaderboard.json
    merged in (for protocol clean, those scored on the board's own images: other_data_boards takes the rest)."""
    fresh_path = work / "report" / FILE
    fresh = [
        r
        for r in (json.loads(fresh_path.read_text()) if fresh_path.exists() else [])
        if r.get("protocol", "official") == protocol
    ]
    if protocol == "clean":
        hashes = {h for r in load(docs, protocol) if (h := _dataset(r))}
        fresh = [r for r in fresh if not hashes or _dataset(r) in hashes]
    return merge(load(docs, protocol), fresh)


def other_data_boards(work: Path, docs: Path, protocol: str = "clean") -> dict[str, list[dict[str, Any]]]:
    """The protocol's boards of runs scored on other images than its committed board (more data roots, say), one
    per dataset, `<board>-<dataset hash>.json`: every such board already in docs, with the fresh rows of
    <work>/report/leaderboard.json merged into theirs. They do not rank with the committed board (merge refuses),
    and none of them drops out."""
    stem = FILES[protocol].removesuffix(".json")
    boards = {path.name: json.loads(path.read_text()) for path in sorted(docs.glob(f"{stem}-*.json"))}
    fresh_path = work / "report" / FILE
    fresh = json.loads(fresh_path.read_text()) if fresh_path.exists() else []
    hashes = {h for r in load(docs, protocol) if (h := _dataset(r))}
    other = [r for r in fresh if r.get("protocol", "official") == protocol and hashes and _dataset(r) not in hashes]
    for h in sorted({str(_dataset(r)) for r in other}):
        name = f"{stem}-{h[:8]}.json"
        boards[name] = merge(boards.get(name, []), [r for r in other if _dataset(r) == h])
    return dict(sorted(boards.items()))


def save_other_data(boards: dict[str, list[dict[str, Any]]], docs: Path) -> None:
    for name, board in boards.items():
        (docs / name).write_text(json.dumps(board, indent=1) + "\n")


def other_data_section(boards: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One table per board of other_data_boards."""
    lines: list[str] = []
    for name, board in boards.items():
        dataset = name.removeprefix(FILES["clean"].removesuffix(".json") + "-").removesuffix(".json")
        lines += [
            f"### Protocol clean on other data (`docs/{name}`)",
            "",
            f"{len(board)} models trained under protocol `clean` on a different set of data roots (dataset "
            f"`{dataset}`): their validation images differ from the table above, so they rank only among "
            "themselves. The tie-broken check of each run is in the generalisation section.",
            "",
            *_table(board),
            "",
        ]
    return lines


def update(work: Path, docs: Path) -> list[dict[str, Any]]:
    """Merge <work>/report/leaderboard.json into docs/leaderboard.json, docs/leaderboard-clean.json and the clean
    boards of other data (other_data_boards), and refresh docs/evaluation.md. Returns the official board."""
    board, clean = merged(work, docs), merged(work, docs, "clean")
    if not board:
        raise FileNotFoundError(f"nothing to merge: no {work / 'report' / FILE} and no {docs / FILE}")
    other_data = other_data_boards(work, docs)
    save(board, docs)
    save(clean, docs, "clean")
    save_other_data(other_data, docs)
    update_docs(board, docs, clean, other_data)
    return board
