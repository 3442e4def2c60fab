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
        (["--max-queue-ms", "0"], "--max-queue-ms"),
        (["--cors-origin", "example.org"], "--cors-origin"),
        (["--api-key", " "], "--api-key is empty"),
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
    for words in (
        "/api/search",
        "--max-upload-mb",
        "--host",
        "--port",
        "INDEX_DIR",
        "--max-queue-ms",
        "--runtime",
        "--cors-origin",
        "--api-key",
        "/metrics",
        "/api/search/similar",
    ):
        assert words in out


def test_serve_announces_only_after_it_listens(shape_index):
    """With the port taken, ``sbir serve`` never says "serving at" and exits 2 with one line naming the port."""
    import socket
    import subprocess
    import sys

    _, index_dir = shape_index
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "sbir.cli", "serve", str(index_dir), "--port", str(port), "--log-level", "critical"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "serving" not in proc.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_refuses_another_runtime_than_the_index(shape_index, capsys):
    """``--runtime`` must be the index's (a torch index here): one error line naming the fix."""
    _, index_dir = shape_index
    assert main(["serve", str(index_dir), "--runtime", "onnx", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "runtime 'torch'" in err and "Omit --runtime" in err
    assert "Traceback" not in err


def test_serve_reads_the_api_key_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SBIR_API_KEY", "   ")
    assert main(["serve", str(tmp_path)]) == 2
    assert "--api-key is empty" in capsys.readouterr().err
