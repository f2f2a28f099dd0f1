"""Which prompting gives the most usable distinct candidates per source from the local teacher?

Runs every shipped prompt template on the first N demo sources with the same budget of n paraphrases per
source and prints a table. "Usable": parsed, not a copy of the source, distinct within the source, at
least 3 words, and a character-length ratio within [0.5, 2.0].

    .venv/bin/python bench/prompting.py [--sources 40] [--offset 0] [--n 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from curation.parsing import parse_paraphrases
from curation.prompt_templates import available, load_template
from curation.teachers.local import LocalTeacher
from curation.text import normalize

DEMO = Path(__file__).resolve().parents[1] / "pipelines/data/demo_sources.txt"


def usable(source: str, items: list[str]) -> list[str]:
    out, seen = [], {normalize(source).lower()}
    for it in items:
        key = normalize(it).lower()
        ratio = len(it) / max(1, len(source))
        if key in seen or len(it.split()) < 3 or not 0.5 <= ratio <= 2.0:
            continue
        seen.add(key)
        out.append(it)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=40)
    ap.add_argument("--offset", type=int, default=0, help="skip the first K demo sources")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    sources = [s for s in DEMO.read_text().splitlines() if s][args.offset: args.offset + args.sources]
    teacher = LocalTeacher(None, "auto")
    print(f"teacher {teacher.model_id} ({teacher.dtype}), {len(sources)} sources, n={args.n}\n")
    print(f"{'template':32} {'requests':>8} {'parsed/src':>10} {'usable/src':>10} {'copies':>7} "
          f"{'tokens':>7} {'seconds':>8} {'usable/s':>8}")
    for ref in sorted({name.rsplit('.v', 1)[0] for name in available()}):
        tpl = load_template(ref)
        reqs = [(s, k) for s in sources for k in (range(args.n) if tpl.mode == "single" else range(1))]
        per_source: dict[str, list[str]] = {s: [] for s in sources}
        tokens, t0 = 0, time.perf_counter()
        for i in range(0, len(reqs), args.batch_size):
            chunk = reqs[i: i + args.batch_size]
            res, _ = teacher.complete([tpl.messages(s, args.n) for s, _ in chunk], temperature=0.9, top_p=0.95,
                                      max_new_tokens=64 if tpl.mode == "single" else 160, seed=i)
            for (s, _), c in zip(chunk, res, strict=True):
                items, _ = parse_paraphrases(c.raw_output, tpl.mode)
                per_source[s].extend(items[: args.n])
                tokens += c.completion_tokens
        secs = time.perf_counter() - t0
        parsed = sum(len(v) for v in per_source.values())
        copies = sum(normalize(it).lower() == normalize(s).lower() for s, v in per_source.items() for it in v)
        good = sum(len(usable(s, v)) for s, v in per_source.items())
        print(f"{tpl.name:32} {len(reqs):8d} {parsed / len(sources):10.2f} {good / len(sources):10.2f} "
              f"{copies:7d} {tokens:7d} {secs:8.1f} {good / secs:8.2f}", flush=True)


if __name__ == "__main__":
    main()
