"""Issue 11, item 6: option values were not checked.

Seen: ``--batch-size -5`` exited 0 having classified nothing; ``--batch-size 0`` and ``--threads 0``
failed every slide with a bare ValueError; an output path under a regular file, or one that cannot
be written, gave a traceback and exit 1 where the docs promise exit 2 with a message.
"""

from __future__ import annotations

import pytest

from bmengine.engine.pipeline.run import RunConfig
from cli_helpers import bmengine, crop_folder, ingest


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    ingest(crop_folder(root / "crops", {"S": {"eosinophil": 2}}), root / "slides")
    return root / "slides"


@pytest.mark.parametrize("args", [("--batch-size", "-5"), ("--batch-size", "0"), ("--threads", "0"),
                                  ("--max-crop-pixels", "0"), ("--max-crop-bytes", "-1")])
def test_bad_numbers_are_refused_before_any_work(slides, tiny_model, tmp_path, args):
    result = bmengine("run", slides, "--model", tiny_model, "--out", tmp_path / "out", *args)
    assert result.returncode == 2
    assert args[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_path_under_a_regular_file_is_exit_2(slides, tiny_model, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    for command in (["run", slides, "--model", tiny_model], ["ingest", slides.parent / "crops"]):
        result = bmengine(*command, "--out", blocker / "out")
        assert result.returncode == 2, result.stderr
        assert "file.txt" in result.stderr and "Traceback" not in result.stderr


def test_an_output_folder_that_cannot_be_written_is_exit_2(slides, tiny_model):
    """/proc refuses new folders even to root (CI runs as root, so chmod alone would prove nothing)."""
    result = bmengine("run", slides, "--model", tiny_model, "--out", "/proc/bmengine-test-out")
    assert result.returncode == 2
    assert "/proc/bmengine-test-out" in result.stderr and "Traceback" not in result.stderr


def test_the_library_refuses_bad_numbers_too(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        RunConfig(tmp_path, tmp_path / "m.onnx", tmp_path / "out", batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        RunConfig(tmp_path, tmp_path / "m.onnx", tmp_path / "out", threads=-2)
