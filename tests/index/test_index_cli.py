"""``sbir index build|update|info`` and ``sbir search`` as registered by add_index_commands."""

from __future__ import annotations

import argparse
import json

import pytest
from .index_helpers import IMAGE_SIZE, write_gallery

from sbir.data.image_io import load_image
from sbir.errors import SbirError
from sbir.index import Index, QueryEncoder
from sbir.index.commands import add_index_commands


def test_build_info_search_update_from_the_command_line(tmp_path, gallery, cli, capsys, tiny_checkpoint):
    idx = tmp_path / "idx"
    (gallery / "bad.png").write_bytes(b"garbage")
    run = tiny_checkpoint.parent
    assert cli(["index", "build", str(gallery), "--model", str(run), "--out", str(idx), "--image-size", str(IMAGE_SIZE), "--no-progress", "--workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert "built" in out and "6 images" in out and "skipped 1" in out
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

    # strokes as a query file
    strokes = tmp_path / "q.json"
    strokes.write_text(json.dumps({"strokes": [[[0, 10, 20], [0, 20, 0]]]}))
    assert cli(["search", str(idx), str(strokes), "-k", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 1

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
