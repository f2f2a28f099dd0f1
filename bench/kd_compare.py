"""Three students on one export and one step budget: sequence-level KD, word-level KD, Joint-Teaching.

    .venv/bin/python -m bench.kd_compare [--steps N] [--demo work/demo] [--keep DIR]

The corpus is the demo's curated export (run `make demo` first), taken through the `joint-teaching` recipe up to
its own export; then the recipe's student (the embedded SmolLM2-135M pruned to 15 of its 30 layers) is trained
three times from the same start, with the same data order and steps: `kd: seq` (the exported text, the
reference), `kd: word` (the 30-layer teacher's distributions), and `kd: word` with `joint_teaching: 0.5`; each is
evaluated with `paradistill evaluate` on the export's test split. Printed: validation loss, cosine to the source,
iBLEU, self-BLEU, copy rate, seconds per step, and each row's time per step against the seq-KD row's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script too: bench/curation.py must not shadow the curation package
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.table import print_table  # noqa: E402

RECIPE = ROOT / "pipelines" / "recipes" / "joint-teaching.yaml"
VARIANTS = {"seq KD": {"kd": "seq"}, "word KD": {"kd": "word"},
            "Joint-Teaching": {"kd": "word", "joint_teaching": 0.5}}


def student_row(name: str, train: dict, evaluation: dict) -> dict:
    m = evaluation["metrics"]
    return {"student": name, "steps": train["steps"], "val_loss": train["losses"]["val_final"],
            "cosine": m["cosine"]["student"], "ibleu": m["ibleu"]["student"], "self_bleu": m["self_bleu"]["student"],
            "copy_rate": m["copy_rate"]["student"], "s_per_step": train["seconds"] / max(1, train["steps"]),
            "eval_s": evaluation["seconds"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's max_steps)")
    ap.add_argument("--demo", type=Path, default=Path("work/demo"), help="the demo's workdir (make demo)")
    ap.add_argument("--limit", type=int, default=40, help="test sources decoded per student")
    ap.add_argument("--layers", type=int, help="student layers (default: the recipe's 15; 30 = unpruned)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args(argv)

    from pipelines import runner, student
    from pipelines.recipes_io import load_recipe
    from schemas.recipe import EvaluateConfig

    export = args.demo / "exports" / "demo-paraphrases" / "0.1.0"
    if not export.is_dir():
        raise SystemExit(f"error: {export}: no demo export; run `make demo` first (or pass --demo WORKDIR)")
    recipe = load_recipe(str(RECIPE))[0]
    recipe.teacher.path = str(export.resolve())
    train_cfg, eval_cfg = recipe.train, recipe.evaluate or EvaluateConfig()
    if args.layers:
        train_cfg = train_cfg.model_copy(update={"student_layers": args.layers})
    steps = args.steps or train_cfg.max_steps
    recipe = recipe.model_copy(update={"train": None, "evaluate": None})
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kd-compare-"))
    try:
        res = runner.run(recipe, folder / "wd", progress=False)
        data = res["export"]["path"]
        print(f"corpus: {data} (from {export}); student: SmolLM2-135M with {train_cfg.student_layers} layers; "
              f"teacher: all 30 layers; {steps} steps of {train_cfg.batch_size}", flush=True)
        rows = []
        for name, kd in VARIANTS.items():
            cfg = train_cfg.model_copy(update={"max_steps": steps, "teacher": train_cfg.teacher.model_copy(
                update={"joint_teaching": 0.0, **kd})})
            out = folder / "students" / name.replace(" ", "-")
            trained = student.train(data, cfg, out, progress=False)
            evaluation = student.evaluate(out, config=eval_cfg.model_copy(update={"limit": args.limit}))
            rows.append(student_row(name, trained, evaluation))
            print(f"[{name}] {trained['seconds']:.0f} s training, {evaluation['seconds']:.0f} s evaluating", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    ref = rows[0]["s_per_step"]
    head = ["student", "steps", "val loss", "cosine", "iBLEU", "self-BLEU", "copy rate", "s/step", "x seq KD"]
    def num(v) -> str:
        return "-" if v is None or v != v else f"{v:.3f}"

    print_table(head, [[r["student"], str(r["steps"]), *(num(r[k]) for k in ("val_loss", "cosine", "ibleu",
                                                                             "self_bleu", "copy_rate")),
                        f"{r['s_per_step']:.2f}", f"{r['s_per_step'] / ref:.2f}x"] for r in rows])
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
