"""bench/RESULTS.md: the hand-written preface (bench/PREFACE.md), then one marked block per
benchmark. Each benchmark rewrites only its own block; `python bench/results_md.py --rebuild`
regenerates every block that is built from rows (bench/results/*.jsonl)."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PREFACE = HERE / "PREFACE.md"


def write_block(tag: str, body: str) -> None:
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else ""
    first = text.find("<!-- ")
    blocks = text[first:] if first >= 0 else ""
    if start in blocks:
        blocks = blocks[:blocks.index(start)] + block + blocks[blocks.index(end) + len(end):]
    else:
        blocks = blocks.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(PREFACE.read_text().rstrip() + "\n\n" + blocks.lstrip())
    tmp.replace(RESULTS)


def rebuild() -> None:
    """Every row-backed block again from its rows: the comparison blocks (bench_methods)."""
    import bench_methods
    import harness

    for log in sorted(harness.RESULTS.glob("*.jsonl")):
        rows = harness.read_rows(log)
        tag = log.stem
        if not (rows and "method" in rows[0] and f"<!-- bench_methods:{tag} -->" in RESULTS.read_text()):
            continue
        if not (harness.RESULTS / "labels" / tag).is_dir():
            # the seed-choice and agreement tables need the runs' label files (not committed)
            print(f"skipped bench_methods:{tag}: its label files (bench/results/labels/{tag}/) "
                  "are not on this machine")
            continue
        bench_methods.write_tables(rows, tag, rows[-1].get("command", ""))
        print(f"rebuilt bench_methods:{tag} from {len(rows)} rows")


if __name__ == "__main__":
    if sys.argv[1:] == ["--rebuild"]:
        rebuild()
    else:
        sys.exit("usage: python bench/results_md.py --rebuild")
