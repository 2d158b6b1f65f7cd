"""Spread of ablation results over seeds: is a difference between two rows more than noise?

Usage: python benchmarks/seed_spread.py OUT.md ABLATION_DIR [ABLATION_DIR ...]

Each ABLATION_DIR holds an ``ablation.csv`` from ``bmengine ablate`` run with another ``--seed``
(which also draws another validation split and another initialisation). Configurations present in
at least two folders get their per-seed macro-F1, mean and standard deviation over the seeds they
ran, and whether they beat the reference configuration (first backbone + attention + loss of the
first ablation) under every seed both ran: a comparison within one seed shares the split, so it is
fairer than comparing means.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

KEY = ["backbone", "attention", "loss"]


def _config(folder: Path) -> dict:
    return json.loads((folder / "ablation_config.json").read_text())


def spread(folders: list[Path]) -> pd.DataFrame:
    tables = [pd.read_csv(f / "ablation.csv").assign(seed=_config(f)["seed"]) for f in folders]
    wide = pd.concat(tables).pivot_table(index=KEY, columns="seed", values="macro_f1")
    wide = wide[wide.notna().sum(axis=1) >= 2]
    seeds = list(wide.columns)
    first = _config(folders[0])
    reference = wide.loc[(first["backbones"][0], first["attentions"][0], first["losses"][0])]
    ran = wide[seeds].notna()
    beats = ((wide[seeds] > reference[seeds]) | ~ran).all(axis=1)
    wide.columns = [f"seed {c}" for c in seeds]
    wide["seeds"] = ran.sum(axis=1).astype(str)
    wide["mean"] = wide.iloc[:, : len(seeds)].mean(axis=1)
    wide["sd"] = wide.iloc[:, : len(seeds)].std(axis=1, ddof=1)
    wide["beats reference in every seed"] = beats.map({True: "yes", False: "no"})
    return wide.sort_values("mean", ascending=False).reset_index()


def to_markdown(table: pd.DataFrame, folders: list[Path]) -> str:
    columns = list(table.columns)
    lines = ["# Seed spread of the ablation (macro F1 on each seed's validation split)", "",
             "Made by `python benchmarks/seed_spread.py OUT.md " + " ".join(str(f) for f in folders) + "`; "
             "each folder's `ablation.md` holds its exact `bmengine ablate` command.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.itertuples(index=False):
        cells = [v if isinstance(v, str) else "—" if pd.isna(v) else f"{v:.2%}" for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out, *dirs = sys.argv[1:]
    folders = [Path(d) for d in dirs]
    Path(out).write_text(to_markdown(spread(folders), folders))
    print(Path(out).read_text())
