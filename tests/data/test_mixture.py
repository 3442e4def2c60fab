"""The ``mixture`` format: several datasets merged by class name (sources.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sbir.cli import main
from sbir.data.formats import detect_format, load_dataset
from sbir.errors import DataError
from tests.conftest import REPO_ROOT, shared_data
from tests.data.test_quickdraw_chairv2 import CROSS, SQUARE, fake_chairv2, write_ndjson


def _img(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (shade, shade, shade)).save(path)


def sketchy_like(root: Path) -> Path:
    """photo/<class>/ + sketch/<class>/ with classes Hot-air_balloon and cat, 2 photos each, 1 sketch per photo."""
    for cls in ("Hot-air_balloon", "cat"):
        for i in range(2):
            _img(root / "photo" / cls / f"p{i}.jpg", 40 * i)
            _img(root / "sketch" / cls / f"p{i}-1.png", 200)
    return root


def paired_like(root: Path) -> Path:
    """trainA/trainB/testA/testB: fine-grained pairs without classes."""
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            _img(root / f"{split}B" / f"{i:05d}.png", 10 * i)
            _img(root / f"{split}A" / f"{i:05d}_01.png", 250)
    return root


def write_sources(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sources.yaml").write_text(text)
    return root


@pytest.fixture
def parts(tmp_path) -> Path:
    sketchy_like(tmp_path / "sk")
    qd = tmp_path / "qd"
    qd.mkdir()
    write_ndjson(qd / "hot air balloon.ndjson", [SQUARE, CROSS], word="hot air balloon")
    write_ndjson(qd / "zebra.ndjson", [SQUARE], word="zebra")  # no source has zebra photos
    paired_like(tmp_path / "shoes")
    (tmp_path / "cv2").mkdir()
    fake_chairv2(tmp_path / "cv2")
    return tmp_path


def test_mixture_merges_sources_by_class_name(parts):
    root = write_sources(
        parts / "mix",
        "sources:\n"
        "  - path: ../sk\n"
        "  - path: ../qd\n"
        "  - path: ../shoes\n"
        "    label: shoe\n"
        "  - path: ../cv2\n"
        "    label: cat\n"
        "    name: chairs_as_cats\n",
    )
    assert detect_format(root) == "mixture"
    ds = load_dataset(root)
    assert ds.format == "mixture" and list(ds.splits) == ["train"]
    split = ds.splits["train"]
    # The Quick, Draw! balloons join Sketchy's class under Sketchy's spelling; zebra has no photos anywhere.
    assert split.labels() == ["Hot-air_balloon", "cat", "shoe"]
    by_source: dict[str, list] = {}
    for s in split.sketches:
        by_source.setdefault(s.id.split("/")[0], []).append(s)
    assert {k: len(v) for k, v in by_source.items()} == {"sk": 4, "qd": 2, "shoes": 2, "chairs_as_cats": 3}
    assert {s.label for s in by_source["qd"]} == {"Hot-air_balloon"}
    assert {s.label for s in by_source["chairs_as_cats"]} == {"cat"}  # Chair-V2: train split only (3 of 4)
    assert ds.skipped == ["qd: class 'zebra' (1 sketches): no source has photos of it"]
    # Ids are prefixed by source, so every id is unique, and a fine-grained pair stays a pair.
    ids = [r.id for r in (*split.photos, *split.sketches)]
    assert len(ids) == len(set(ids))
    photo_ids = {p.id for p in split.photos}
    shoe = next(s for s in by_source["shoes"] if s.id == "shoes/00001_01")
    assert shoe.photo_id == "shoes/00001" and shoe.photo_id in photo_ids
    assert len(split.photos) == 4 + 2  # Sketchy photos + the shoes' training photos (test split not taken)
    assert all(p.label == "shoe" for p in split.photos if p.id.startswith("shoes/"))
    # Images load lazily from their own formats (files, rasterised strokes).
    assert by_source["qd"][0].image.load().size[0] > 0 and by_source["chairs_as_cats"][0].image.load().mode


def test_mixture_takes_test_splits_only_when_asked(parts):
    root = write_sources(parts / "mix", "sources:\n  - path: ../shoes\n    label: shoe\n    splits: [train, test]\n")
    split = load_dataset(root).splits["train"]
    # Two splits of one source: their ids repeat (00000 in both), so the split joins the prefix.
    assert {p.id for p in split.photos} == {"shoes/train/00000", "shoes/train/00001", "shoes/test/00000"}
    assert {(s.id, s.photo_id) for s in split.sketches} == {
        ("shoes/train/00000_01", "shoes/train/00000"),
        ("shoes/train/00001_01", "shoes/train/00001"),
        ("shoes/test/00000_01", "shoes/test/00000"),
    }


@pytest.mark.parametrize(
    "text, needle",
    [
        ("sources: []\n", "non-empty list under 'sources:'"),
        ("sources:\n  - path: ../nowhere\n", "does not exist"),
        ("sources:\n  - path: ../sk\n    colour: red\n", "unknown key(s) colour"),
        ("sources:\n  - path: ../sk\n  - path: ../sk\n", "two sources are called 'sk'"),
        ("sources:\n  - path: ../shoes\n", "records without a class"),
        ("sources:\n  - path: ../qd\n", "none of the classes"),
        ("sources:\n  - path: ../sk\n    splits: [test]\n", "has no split(s) test"),
        ("sources:\n  - path: ../sk\n    max_per_class: 0\n", "max_per_class must be a positive integer"),
        ("sources: [unclosed\n", "cannot read it as YAML"),
    ],
)
def test_bad_sources_are_one_clear_error(parts, text, needle):
    root = write_sources(parts / "mix", text)
    with pytest.raises(DataError) as err:
        load_dataset(root)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_a_bad_mixture_in_one_line(parts, capsys):
    root = write_sources(parts / "mix", "sources:\n  - path: ../nowhere\n")
    rc = main(["train", "--task", "category", "--data", str(root), "--set", "optim.epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "sources[0]" in err[0] and "does not exist" in err[0]


def test_general_model_sources_read_the_shared_data():
    shared_data("sketchy_mini")
    ds = load_dataset(REPO_ROOT / "configs" / "general")
    split = ds.splits["train"]
    assert len(split.labels()) == 126  # Sketchy's 125 classes + handbag
    sources = {s.id.split("/")[0] for s in split.sketches}
    assert sources == {"sketchy_mini", "quickdraw_mini", "shoes", "chairs", "handbags", "chairv2_strokes"}
    # Quick, Draw! contributes the 93 classes Sketchy has photos of; the rest are listed, not dropped silently.
    assert len({s.label for s in split.sketches if s.id.startswith("quickdraw_mini/")}) == 93
    assert len(ds.skipped) == 344 - 93


def test_what_a_mixture_leaves_out_is_summed_in_one_line(parts):
    from sbir.data.formats import skipped_message

    write_ndjson(parts / "qd" / "yak.ndjson", [SQUARE, CROSS, SQUARE], word="yak")
    root = write_sources(parts / "mix", "sources:\n  - path: ../sk\n  - path: ../qd\n")
    msg = skipped_message(load_dataset(root))
    assert msg == "mixture: left out 4 sketch(es) of 2 class(es) that no source has photos of"


def test_max_per_class_caps_every_kind_of_source(parts):
    root = write_sources(
        parts / "mix",
        "sources:\n  - path: ../sk\n  - path: ../cv2\n    label: cat\n    name: chairs_as_cats\n    max_per_class: 1\n",
    )
    sketches = load_dataset(root).splits["train"].sketches
    assert sum(s.id.startswith("chairs_as_cats/") for s in sketches) == 1  # Chair-V2 strokes: 3 in train
