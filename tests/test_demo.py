"""fastntk demo: both requests run, the table says how to read it, the files are written."""
import json

import pytest

from fastntk.demo import HOW_TO_READ, demo_markdown, run_demo


@pytest.mark.slow
def test_demo_runs_both_requests_and_writes_table_and_plot(tmp_path):
    results, paths = run_demo(str(tmp_path), progress=False, limit=150, epochs=2, pretrain_epochs=1, image_size=8,
                              cache_dir=str(tmp_path / "cache"), baselines=["FT"])
    assert set(results) == {"class", "random"}
    assert results["class"]["config"]["forget"] == "class" and results["random"]["config"]["forget"] == "random"
    assert results["class"]["config"]["finetune_loss"] == "ce"
    md = open(paths["md"]).read()
    assert md.startswith(HOW_TO_READ) and "accuracy on the forgotten class" in md
    for name in ("original", "retrain", "Fast-NTK", "FT"):
        assert f"| {name} |" in md
    assert json.load(open(paths["json"]))["class"]["sizes"]["n_forget"] > 0
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the forgotten class: the retrained model never saw it, so its accuracy there is 0
    assert results["class"]["methods"]["retrain"]["UA"] == 1.0
    assert demo_markdown(results) == md
