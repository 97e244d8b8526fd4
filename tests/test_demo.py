"""`autodetr_demo --minutes 1` on the small phantom: exit 0, pictures, index.html, metrics, and the atlas prior's
metrics on the same held-out cases beside them."""
from __future__ import annotations

import json

import matplotlib.image
import pytest

from autodetr.demo.entrypoints import main


def test_demo_small_one_minute(tmp_path, monkeypatch, capsys):
    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.delenv(f"AUTODETR_{kind}", raising=False)
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--minutes", "1", "--size", "small", "--num-cases", "6", "--num-test-cases", "2"])
    assert exit_info.value.code == 0
    pictures = sorted((out / "pictures").glob("*.png"))
    assert len(pictures) == 2
    for picture in pictures:
        pixels = matplotlib.image.imread(picture)
        assert pixels.shape[0] == 560 and pixels.shape[1] == 1500 and pixels.std() > 0.05
    curve = matplotlib.image.imread(out / "training_curve.png")
    assert curve.ndim == 3 and curve.shape[0] > 200
    page = (out / "index.html").read_text()
    assert "<table>" in page and all(p.name in page for p in pictures) and "training_curve.png" in page
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["mAR"] <= 1.0
    assert len(list((out / "predictions").glob("*.json"))) == 2
    # the baseline on the same held-out cases: the atlas prior of the same training cases, printed and on the page
    prior = json.loads((out / "evaluation_atlas_prior" / "metrics.json").read_text())
    assert prior["cases"] == metrics["cases"] and 0.0 <= prior["mAP"] <= 1.0
    printed = capsys.readouterr().out
    assert "atlas prior" in printed and f"mAP {prior['mAP']:.3f}" in printed and f"mAP {metrics['mAP']:.3f}" in printed
    assert "atlas prior" in page

    # --anatomy reaches the phantom generator: the same folder asked for varied anatomy is refused, nothing written
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--minutes", "1", "--size", "small", "--num-cases", "6", "--num-test-cases", "2",
              "--anatomy", "varied"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "anatomy standard" in error and "anatomy varied" in error and "give another --out" in error

    # a run folder whose phantoms another generator version made: refused with the demo's own advice (it has no
    # --overwrite), one line, exit 2, before anything is written
    raw_json = next(out.glob("raw/Dataset*_Phantom/dataset.json"))
    record = json.loads(raw_json.read_text())
    record["phantom"]["generator_version"] -= 1
    raw_json.write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--minutes", "1", "--size", "small", "--num-cases", "6", "--num-test-cases", "2"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "give another --out" in error and "--overwrite" not in error
    assert json.loads(raw_json.read_text()) == record
