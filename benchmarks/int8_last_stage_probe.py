"""Probe (issue 10 item 2): how much of the int8 OOD score's loss comes from the last stage's
quantised convolutions? Exports a held-out-class run's int8 model with every node whose name
contains ``--keep-fp32`` (default: timm CoAtNet's last stage, ``/stages.3/``) left fp32, as the
OOD head is, then scores it like ``open_set.py evaluate``.

    python benchmarks/int8_last_stage_probe.py RUN_DIR --held-out basophil --json out.json

RUN_DIR's ``export/`` must not exist yet (a copy of the run with links to its checkpoints and
split.json keeps the original export).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--held-out", required=True)
    parser.add_argument("--keep-fp32", default="/stages.3/", help="node-name fragment left out of int8")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import bmengine.training.ood as ood
    import open_set

    head_nodes = ood.head_nodes

    def head_and_kept(graph) -> list[str]:  # quantize_int8 excludes these and feeds them float inputs
        kept = [n.name for n in graph.node if args.keep_fp32 in n.name]
        print(f"left fp32: {len(kept)} nodes matching {args.keep_fp32!r}", flush=True)
        return head_nodes(graph) + kept

    ood.head_nodes = head_and_kept
    args.json.write_text(json.dumps(open_set.evaluate(args.run, args.held_out), indent=1) + "\n")


if __name__ == "__main__":
    main()
