"""Execute the notebooks top to bottom, in full mode (embedded model) unless --quick.

    .venv/bin/python scripts/run_notebooks.py [--quick] [--out DIR] [NAME ...]

Executed copies go to DIR (default runs/notebooks); the committed notebooks stay output-free.
Full runs save their figures under notebooks/figures/.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few prompts")
    parser.add_argument("--out", default=str(ROOT / "runs" / "notebooks"))
    args = parser.parse_args()
    os.environ["CLUE_MI_QUICK"] = "1" if args.quick else "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MPLBACKEND"] = "Agg"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.names:
        books = [b for b in books if any(n in b.stem for n in args.names)]
    for path in books:
        book = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        client = nbclient.NotebookClient(
            book,
            timeout=3600,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute()
        finally:
            nbformat.write(book, out / path.name)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s -> {out / path.name}", flush=True)


if __name__ == "__main__":
    main()
