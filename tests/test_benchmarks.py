"""The CPU benchmarks run end to end at tiny sizes, and measure what their tables say they measure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import engine, example_images, pipeline, resume


def test_resnet18_has_torchvision_resnet18_shape():
    net = pipeline.resnet18()
    assert sum(p.numel() for p in net.parameters()) == 11_689_512  # torchvision.models.resnet18's count
    with torch.inference_mode():
        assert net.layer4(torch.zeros(1, 256, 14, 14)).shape == (1, 512, 7, 7)
        assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_pipeline_compare_reports_both_contenders():
    net = pipeline.resnet18()
    images = np.random.default_rng(0).standard_normal((80, 3, 32, 32), dtype=np.float32)
    row = pipeline.compare(net, net, "layer4", images, "random:8", batch=40, rounds=1)
    assert row["images"] == 80 and row["forward_ips"] > 0 and row["dirscope_ips"] > 0
    assert np.isclose(row["overhead"], row["forward_ips"] / row["dirscope_ips"] - 1)  # one round: both alike
    assert np.isclose(row["overhead_of_medians"], row["overhead"])


def test_race_rounds_alternate_which_contender_goes_first():
    calls: list[str] = []
    times = engine.race_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a-b, b-a, a-b
    assert [len(t) for t in times.values()] == [3, 3]


def test_paired_ratio_cancels_a_load_that_slows_a_whole_round():
    times = {"run": [1.1, 3.3, 1.2], "bare": [1.0, 3.0, 1.0]}  # round 2 ran on a loaded machine
    assert engine.paired_ratio(times, "run", "bare") == pytest.approx(1.1)
    assert engine.medians(times) == {"run": 1.2, "bare": 1.0}
    found = engine.overheads(times, "run", "bare")
    assert found.pop("overhead_spread") == "0.100 to 0.150"  # ratios - 1: 0.1, 0.1, 0.2
    assert found == pytest.approx({"overhead": 0.1, "overhead_of_medians": 0.2})


def test_engine_vs_gemm_reports_the_paired_ratio(monkeypatch):
    raced = []
    monkeypatch.setattr(
        engine,
        "race_rounds",
        lambda contenders, rounds: (
            raced.append(sorted(contenders)) or {"gemm": [1.0, 3.0, 1.0], "engine": [1.1, 3.3, 1.2]}
        ),
    )
    row = engine.engine_vs_gemm(n=200, dim=8, n_dirs=4, k=2, batch=100, rounds=3)
    assert raced == [["engine", "gemm"]]
    assert row["gemm"] == 1.0 and row["engine"] == 1.2  # medians
    assert row["ratio"] == pytest.approx(1.1)  # the median of 1.1, 1.1, 1.2, not 1.2 / 1.0
    assert row["ratio_spread"] == "1.100 to 1.150"


def test_alternatives_race_whole_runs_and_tallies_alone():
    row = engine.engine_vs_alternatives(n=2_000, dim=16, n_dirs=8, k=4, batch=500, rounds=1)
    for design in ("engine", "store_all", "concat_resort"):
        assert row[design] > 0 and row[f"{design}_tally"] > 0
    assert row["gemm"] > 0


def test_contenders_find_the_same_extremes():
    x, v = engine.synthetic(1_000, 12, 6)
    blocks = list(engine.projections(x, v, 300))
    every = torch.cat(blocks, dim=1)
    assert every.shape == (6, 1_000) and torch.allclose(every, v @ x.T)
    result = engine.engine(blocks, 5).result()
    for top, bottom in (engine.store_all_then_topk(blocks, 5), engine.concat_and_resort(blocks, 5)):
        np.testing.assert_array_equal(top.numpy(), result.top_values)
        np.testing.assert_array_equal(bottom.numpy(), result.bottom_values)


def test_kill_cost_resumes_a_killed_cli_run(tmp_path, monkeypatch):
    monkeypatch.setattr(resume, "DIRECTIONS", "basis")
    rows = resume.kill_cost(n=3_000, every=0.2, fractions=(0.7,), repeats=1)
    assert len(rows) == 1 and rows[0]["killed_s"] < rows[0]["whole_s"]
    assert np.isclose(rows[0]["lost_s"], rows[0]["killed_s"] + rows[0]["resumed_s"] - rows[0]["whole_s"])


def test_example_images_compares_streamed_with_held_thumbnails(monkeypatch):
    monkeypatch.setattr(example_images, "SIDES", 16)
    (row,) = example_images.compare((300,))
    assert row["n"] == 300 and np.isclose(row["decoded_mib"], 300 * 16 * 16 * 3 / 2**20)
    assert row["stream_s"] > 0 and row["memory_s"] > 0 and row["stream_mib"] >= 0 and row["memory_mib"] >= 0
