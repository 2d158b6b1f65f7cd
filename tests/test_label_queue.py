"""``bmengine label-queue``: after a run with the shipped default, another lab's slide is warned and
its crops, the original bytes, come out sorted by the model's call into a folder `finetune` reads;
the training lab's own slide is not drawn from; nothing is ever overwritten; a store that changed
since the run is left out."""

import csv
import shutil

import pyarrow.parquet as pq
import pytest

from bmengine.engine.assets import DEFAULT_MODEL
from bmengine.engine.dataset import ImageFolder
from cli_helpers import bmengine, ingest
from conftest import DATA, pbc_files

TECOM = DATA / "wbc_zheng" / "tecom"


def _tecom_files(n_per_class: int) -> list:
    files = []
    for folder in sorted(p for p in TECOM.iterdir() if p.is_dir() and not p.name.startswith("_")):
        files.extend(sorted(folder.glob("*.png"))[:n_per_class])
    return files


@pytest.fixture(scope="module")
def warned_run(tmp_path_factory):
    """Two slides through the shipped default: 40 tecom crops (another lab) and 40 PBC crops."""
    root = tmp_path_factory.mktemp("label_queue")
    crops = root / "crops"
    (crops / "tecom-lab").mkdir(parents=True)
    (crops / "pbc-lab").mkdir()
    for f in _tecom_files(10):
        shutil.copy(f, crops / "tecom-lab" / f"{f.parent.name}_{f.name}")
    for cls in ("neutrophil", "lymphocyte", "monocyte", "eosinophil"):
        for f in pbc_files(cls, 10, offset=300):
            shutil.copy(f, crops / "pbc-lab" / f"{cls}_{f.name}")
    ingest(crops, root / "slides")
    result = bmengine("run", root / "slides", "--model", DEFAULT_MODEL, "--out", root / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    (root / "run.stderr").write_text(result.stderr)
    return root


def test_the_run_names_the_warned_slide_and_the_way_to_adapt(warned_run):
    console = (warned_run / "run.stderr").read_text()
    assert "1 slide(s) with a domain warning" in console
    assert f"bmengine label-queue {warned_run / 'slides'} --run {warned_run / 'out'}" in console


def test_only_the_warned_slide_is_drawn_from_with_its_original_bytes(warned_run, tmp_path):
    queue = tmp_path / "to_label"
    result = bmengine("label-queue", warned_run / "slides", "--run", warned_run / "out", "--out", queue,
                      "--per-class", "4")
    assert result.returncode == 0, result.stderr
    cells = pq.read_table(warned_run / "out" / "tecom-lab" / "cells.parquet").to_pandas().set_index("cell_index")
    classes = tuple(c.removeprefix("prob_") for c in cells.columns if c.startswith("prob_"))
    assert sorted(p.name for p in queue.iterdir() if p.is_dir()) == sorted(classes)
    with open(queue / "label_queue.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["slide_id"] for r in rows} == {"tecom-lab"}  # the PBC slide has no warning
    assert all(r["domain_warning"] for r in rows)
    per_class = {}
    for row in rows:
        crop = queue / row["file"]
        cell = cells.loc[int(row["cell_index"])]
        assert crop.parent.name == row["predicted"] == cell["predicted"]  # sorted by the model's call
        assert cell["qc_flags"] in ("", "unknown") and cell["error"] is None
        original = warned_run / "crops" / cell["source"]  # the path ingest recorded, relative to its folder
        assert crop.read_bytes() == original.read_bytes()  # the crop as ingested, not a re-encoding
        per_class[row["predicted"]] = per_class.get(row["predicted"], 0) + 1
    assert max(per_class.values()) <= 4
    assert sum(per_class.values()) == len(list(queue.rglob("*.png")))
    usable = cells[cells["error"].isna() & cells["qc_flags"].isin(["", "unknown"])]
    expected = {c: min(4, int((usable["predicted"] == c).sum())) for c in classes}
    assert {c: per_class.get(c, 0) for c in classes} == expected  # 4 of every class the model called, or all it has
    dataset = ImageFolder.scan(queue, classes=classes)  # what `bmengine finetune` reads
    assert len(dataset) == len(rows)
    assert "bmengine finetune" in (queue / "README.txt").read_text()
    assert f"{len(rows)} crops from 1 slide in" in result.stderr


def test_a_folder_that_holds_anything_is_never_touched(warned_run, tmp_path):
    queue = tmp_path / "to_label"
    (queue / "neutrophil").mkdir(parents=True)
    work = queue / "neutrophil" / "sorted_by_hand.png"
    work.write_bytes(b"a technician's work")
    result = bmengine("label-queue", warned_run / "slides", "--run", warned_run / "out", "--out", queue)
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert [p.name for p in queue.rglob("*")] == ["neutrophil", "sorted_by_hand.png"]
    assert not queue.with_name("to_label.partial").exists()


def test_all_slides_draws_from_the_training_labs_slide_too(warned_run, tmp_path):
    queue = tmp_path / "q"
    result = bmengine("label-queue", warned_run / "slides", "--run", warned_run / "out", "--out", queue,
                      "--all-slides", "--per-class", "50")
    assert result.returncode == 0, result.stderr
    with open(queue / "label_queue.csv", newline="") as fh:
        slides = {r["slide_id"] for r in csv.DictReader(fh)}
    assert slides == {"tecom-lab", "pbc-lab"}
    usable = 0
    for slide in slides:
        cells = pq.read_table(warned_run / "out" / slide / "cells.parquet").to_pandas()
        usable += int((cells["error"].isna() & cells["qc_flags"].isin(["", "unknown"])).sum())
    assert len(list(queue.rglob("*.png"))) + len(list(queue.rglob("*.jpg"))) == usable  # 50 per class: all of them


def test_a_store_changed_since_the_run_is_left_out(warned_run, tmp_path):
    crops = tmp_path / "crops" / "tecom-lab"
    crops.mkdir(parents=True)
    for f in _tecom_files(2):  # the same slide id, other crops: not what the run classified
        shutil.copy(f, crops / f.name)
    ingest(tmp_path / "crops", tmp_path / "slides")
    queue = tmp_path / "q"
    result = bmengine("label-queue", tmp_path / "slides", "--run", warned_run / "out", "--out", queue)
    assert result.returncode == 2
    assert "tecom-lab" in result.stderr and "changed since the run" in result.stderr
    assert not queue.exists()


def test_a_damaged_cells_table_is_named_and_nothing_is_written(warned_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(warned_run / "out", out, ignore=shutil.ignore_patterns(".bmengine.lock"))
    table = out / "tecom-lab" / "cells.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    queue = tmp_path / "q"
    result = bmengine("label-queue", warned_run / "slides", "--run", out, "--out", queue)
    assert result.returncode == 2 and "cells.parquet: cannot be read as a cells table" in result.stderr
    assert not queue.exists() and not queue.with_name("q.partial").exists()
