"""``sbir index build|update|info`` and ``sbir search`` as registered by add_index_commands."""

from __future__ import annotations

import argparse
import json

import pytest

from sbir.data.image_io import load_image
from sbir.errors import SbirError
from sbir.index import Index, QueryEncoder
from sbir.index.commands import add_index_commands

from .index_helpers import IMAGE_SIZE, write_gallery


def test_build_info_search_update_from_the_command_line(tmp_path, gallery, cli, capsys, tiny_checkpoint):
    idx = tmp_path / "idx"
    (gallery / "bad.png").write_bytes(b"garbage")
    run = tiny_checkpoint.parent
    argv = ["index", "build", str(gallery), "--model", str(run), "--out", str(idx), "--image-size", str(IMAGE_SIZE)]
    assert cli([*argv, "--no-progress", "--workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert "built" in out and "6 images" in out and "skipped 1" in out
    assert "exact search" in out and "index none" not in out
    assert "warning: skipped bad.png" in err

    assert cli(["index", "info", str(idx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 6 and info["model_id"].startswith("test_efficientnet:") and info["kind"] == "none"
    assert info["model_path"] == str(run.resolve()) and info["image_size"] == IMAGE_SIZE and info["dim"] == 32

    query = gallery / "b" / "sub1" / "p001.jpg"
    assert cli(["search", str(idx), str(query), "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res["results"]] == [1, 2, 3]
    # The same ranking as embedding the sketch with the index's model through the Python API.
    index = Index.open(idx)
    enc = QueryEncoder.for_index(index)
    expected = index.search(enc.encode([load_image(query)])[0], 3, model_id=enc.model_id)
    assert [r["path"] for r in res["results"]] == [h.path for h in expected]
    assert [r["score"] for r in res["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    top = res["results"][0]
    assert top["abs_path"] == str(gallery.resolve() / top["path"])
    assert res["results"][0]["score"] >= res["results"][1]["score"] >= res["results"][2]["score"]
    assert set(res["timings_ms"]) == {"load", "embed", "search"}

    assert cli(["search", str(idx), str(query), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# 2 results") and lines[1].split()[0] == "1" and lines[1].endswith(expected[0].path)
    assert "6 images, exact search)" in lines[0]
    assert cli(["search", str(idx), str(query), "-k", "1"]) == 0
    assert capsys.readouterr().out.startswith("# 1 result for")

    # strokes as a query file
    strokes = tmp_path / "q.json"
    strokes.write_text(json.dumps({"strokes": [[[0, 10, 20], [0, 20, 0]]]}))
    assert cli(["search", str(idx), str(strokes), "-k", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 1
    # the file's k is used unless -k is given; a Quick, Draw! record works as it is
    strokes.write_text(json.dumps({"word": "tent", "key_id": "1", "drawing": [[[0, 10, 20], [0, 20, 0]]], "k": 2}))
    assert cli(["search", str(idx), str(strokes), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2

    write_gallery(gallery, n=1, start=40)
    assert cli(["index", "update", str(idx), "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["added"] == 1 and rep["embedded"] == 1 and rep["images"] == 7 and rep["written"]
    assert cli(["index", "update", str(idx), "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_errors_are_sbir_errors(tmp_path, gallery, cli):
    with pytest.raises(SbirError, match="not an sbir index"):
        cli(["index", "info", str(gallery)])
    with pytest.raises(SbirError, match="not an sbir index"):
        cli(["search", str(gallery), str(gallery / "a" / "sub0" / "p000.png")])
    bad = tmp_path / "q.json"
    bad.write_text("[[[1, 2], [3]]]")
    from sbir.index.commands import load_query_image

    with pytest.raises(SbirError, match="stroke 0 has 2 x values but 1 y values"):
        load_query_image(bad)
    with pytest.raises(SbirError, match="cannot read image"):
        load_query_image(tmp_path / "missing.png")


def test_malformed_strokes_file_is_one_line_exit_2(tmp_path, gallery, capsys, pretrained):
    """A strokes file nested 100,000 levels deep, or with bad strokes: one line on stderr, exit 2, no traceback."""
    from sbir.cli import main
    from sbir.index import build_index

    idx = tmp_path / "idx"
    build_index(gallery, "pretrained", idx, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pretrained)
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    nan = tmp_path / "nan.json"
    nan.write_text('{"strokes": [[[0, NaN], [0, 1]]]}')
    extra = tmp_path / "extra.json"
    extra.write_text('{"strokes": [[[0, 1], [0, 1]]], "stroke_width": 99}')
    for path, words in ((deep, "nested 100000 levels deep"), (nan, "non-finite"), (extra, "stroke_width")):
        assert main(["search", str(idx), str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and words in lines[0], lines
        assert "Traceback" not in captured.err


def test_update_report_counts_add_up_with_duplicates(tmp_path, gallery, capsys, cli, pretrained):
    from sbir.index import build_index

    idx = tmp_path / "idx"
    for p in list(gallery.rglob("*.*"))[1:]:
        p.unlink()
    build_index(gallery, "pretrained", idx, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pretrained)
    capsys.readouterr()
    assert cli(["index", "info", str(idx), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1
    assert cli(["index", "update", str(idx), "--no-progress"]) == 0
    assert "(1 image, nothing changed)" in capsys.readouterr().out
    # two new files with the same content: embedded once, the report says so
    write_gallery(gallery, n=1, start=40)
    new = next(p for p in gallery.rglob("p040*"))
    (new.parent / ("copy" + new.suffix)).write_bytes(new.read_bytes())
    assert cli(["index", "update", str(idx), "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["images"] == 3 and rep["added"] == 2 and rep["embedded"] == 1
    (gallery / "b").mkdir(exist_ok=True)
    write_gallery(gallery, n=1, start=41)
    newer = next(p for p in gallery.rglob("p041*"))
    (newer.parent / ("copy2" + newer.suffix)).write_bytes(newer.read_bytes())
    assert cli(["index", "update", str(idx), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "5 images" in out, out
    assert "[added 2, changed 0, removed 0, unchanged 3; embedded 1, reused 0, 1 duplicate" in out, out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["index", "--help"], "build"),
        (["index", "build", "--help"], "--approx"),
        (["index", "update", "--help"], "new or changed"),
        (["index", "info", "--help"], "INDEX_DIR"),
        (["search", "--help"], "-k"),
    ],
)
def test_help(argv, words, capsys):
    parser = argparse.ArgumentParser(prog="sbir")
    add_index_commands(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as ei:
        parser.parse_args(argv)
    assert ei.value.code == 0
    assert words in capsys.readouterr().out
