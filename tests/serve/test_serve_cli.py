"""``sbir serve`` argument handling (the running server is tested in test_serve_browser.py)."""

from __future__ import annotations

import argparse

import pytest

from sbir.cli import main
from sbir.serve.commands import add_serve_command


def test_serve_refuses_a_folder_that_is_not_an_index(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not an sbir index" in err and "sbir index build" in err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--max-k", "0"], "--max-k"),
        (["--port", "70000"], "--port"),
        (["--max-batch", "0"], "--max-batch"),
    ],
)
def test_serve_validates_options(tmp_path, capsys, extra, words):
    assert main(["serve", str(tmp_path), *extra]) == 2
    assert words in capsys.readouterr().err


def test_serve_help(capsys):
    parser = argparse.ArgumentParser(prog="sbir")
    add_serve_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as ei:
        parser.parse_args(["serve", "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for words in ("/api/search", "--max-upload-mb", "--host", "--port", "INDEX_DIR"):
        assert words in out
