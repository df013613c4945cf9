"""Caption matching speed: the workflow's matcher against `grep -F -c -f names` on the same caption text.

    python benchmarks/caption_matching.py [--captions 2000000] [--names 1000]

Generates LAION-like captions (a few to twenty words from a 20,000-word vocabulary, some carrying a
class name, with case, punctuation and hyphens varied) into a metadata parquet and the same text one
caption a line, and 1,000 class names (one to four words, some hyphenated). Times, on one pinned
core and in one run (alternating rounds, medians), `grep -F -c -f names captions.txt` (byte-exact
substring search: a floor on the work, with none of the token semantics) and
``synret.substring.scan_parquet`` with all names' queries at once, as the workflow builds them
(FTS5 semantics: ``name_query``), the matcher's construction included. Writes
``benchmarks/results/caption_matching.json``: bytes per second per core of both, their ratio
(target >= 1), and the match counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def vocabulary(rng: np.random.Generator, n: int) -> list[str]:
    lengths = rng.integers(3, 10, size=n)
    return list(dict.fromkeys("".join(rng.choice(list(LETTERS), size=k)) for k in lengths))


def class_names(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    names = []
    while len(names) < n:
        words = list(rng.choice(vocab[:5000], size=int(rng.integers(1, 5))))
        name = ("-" if rng.random() < 0.1 and len(words) > 1 else " ").join(words)
        if name not in names:
            names.append(name)
    return names


def captions(rng: np.random.Generator, vocab: list[str], names: list[str], n: int) -> list[str]:
    out = []
    zipf = np.minimum(rng.zipf(1.3, size=n * 12), len(vocab)) - 1
    pos = 0
    for i in range(n):
        k = int(rng.integers(3, 20))
        words = [vocab[j] for j in zipf[pos:pos + k]]
        pos += k
        if rng.random() < 0.2:
            words.insert(int(rng.integers(0, len(words) + 1)), names[int(rng.integers(len(names)))])
        text = " ".join(words)
        r = rng.random()
        if r < 0.2:
            text = text.capitalize() + "."
        elif r < 0.25:
            text = text.upper()
        elif r < 0.35:
            text = text.replace(" ", ", ", 1) + "!"
        out.append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=2_000_000)
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="grep and ours alternately; medians reported")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "caption_matching.json"))
    args = parser.parse_args()

    from synret import substring
    from synret.substring import TermMatcher, name_query, scan_parquet
    from workflow_speed import machine

    rng = np.random.default_rng(0)
    vocab = vocabulary(rng, 20_000)
    names = class_names(rng, vocab, args.names)
    text = captions(rng, vocab, names, args.captions)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        txt, names_file, part = folder / "captions.txt", folder / "names.txt", folder / "part-00000.parquet"
        txt.write_text("\n".join(text) + "\n")
        names_file.write_text("\n".join(names) + "\n")
        pq.write_table(pa.table({"SAMPLE_ID": np.arange(len(text)), "URL": [f"http://x/{i}" for i in range(len(text))],
                                 "TEXT": text}), part)
        size = txt.stat().st_size

        # one core for both: grep is single-threaded, and pinning this process (grep inherits it) keeps
        # pyarrow's reader threads and any BLAS threads on that core too
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        grep_runs, ours_runs = [], []
        for _ in range(args.rounds):  # alternating, so a load change on the machine hits both
            start = time.perf_counter()
            grep = subprocess.run(["grep", "-F", "-c", "-f", str(names_file), str(txt)], capture_output=True,
                                  text=True, env={**os.environ, "LC_ALL": "C"})
            grep_runs.append(time.perf_counter() - start)

            queries = [(label, name, terms) for label, name in enumerate(names) for terms in name_query(name)]
            start = time.perf_counter()
            matcher = TermMatcher(queries)
            hits = scan_parquet(str(part), matcher, {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT"})
            ours_runs.append(time.perf_counter() - start)
        grep_seconds, ours_seconds = float(np.median(grep_runs)), float(np.median(ours_runs))

    result = {
        "benchmark": "caption_matching", "captions": len(text), "names": len(names), "caption_bytes": size,
        "grep": {"command": "LC_ALL=C grep -F -c -f names captions.txt", "seconds": round(grep_seconds, 2),
                 "rounds_seconds": [round(t, 2) for t in grep_runs],
                 "bytes_per_second": round(size / grep_seconds), "matching_lines": int(grep.stdout.strip() or 0)},
        "synret": {"seconds": round(ours_seconds, 2), "rounds_seconds": [round(t, 2) for t in ours_runs],
                   "path": "hyperscan" if substring.hyperscan is not None else "arrays", "bytes_per_second": round(size / ours_seconds),
                   "hits": hits.num_rows, "captions_with_a_hit": len(set(hits.column("id").to_pylist())),
                   "semantics": "FTS5 (unicode61 tokens; a name's words in any order; '-' and '/' names as phrases)"},
        "ratio_to_grep": round(grep_seconds / ours_seconds, 3), "target_ratio": 1.0,
        "cores": 1, "pinned_core": core, "machine": machine(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
