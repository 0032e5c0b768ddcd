"""The command line end to end on a tiny model: help, layers, run, figures, and one-line errors."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dirscope.cli import main
from dirscope.errors import DirscopeError
from dirscope.result import Result

TINY_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        net = nn.Sequential()
        net.add_module("features", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()))
        net.add_module("pool", nn.AdaptiveAvgPool2d(1))
        net.add_module("flat", nn.Flatten())
        net.add_module("head", nn.Linear(4, 3))
        net.dirscope_input_shape = (1, 8, 8)
        return net
""")


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "tinymodel.py").write_text(TINY_MODEL)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        x=rng.integers(0, 256, size=(50, 1, 8, 8)).astype(np.uint8),
        y=rng.integers(0, 3, size=50),
        label_names=np.array(["a", "b", "c"]),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_cli(args, capsys):
    args = shlex.split(args) if isinstance(args, str) else args
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_end_to_end(project, capsys):
    code, out, err = run_cli(
        "run --model python:tinymodel:build --layer features --layer head --data npz:data.npz "
        "--directions basis,random:5 --k 4 --out runs/t --quiet",
        capsys,
    )
    assert code == 0, err
    assert "features: D=4, 50 examples; basis 4, random 5" in out
    manifest = json.loads((project / "runs/t/manifest.json").read_text())
    assert manifest["model"]["spec"] == "python:tinymodel:build" and manifest["data"]["spec"] == "npz:data.npz"
    assert (project / "runs/t/figures/features-side-by-side.png").exists()
    code, _, err = run_cli(
        "run --model python:tinymodel:build --layer head --data npz:data.npz --out runs/t --quiet",
        capsys,
    )
    assert code == 2 and err.startswith("error: output directory") and err.count("\n") == 1
    code, out, _ = run_cli(["figures", "runs/t", "--rows", "2"], capsys)
    assert code == 0 and "head-basis.png" in out


def test_layers_lists_names_and_shapes(project, capsys):
    code, out, _ = run_cli(["layers", "python:tinymodel:build"], capsys)
    assert code == 0
    assert "features.1" in out and "[4, 8, 8]" in out and "head" in out and "[3]" in out
    rows = {line.split()[0]: line.split()[-2:] for line in out.splitlines()[1:-1]}
    assert rows["features.1"] == ["4", "64"] and rows["head"] == ["3", "1"]  # D and positions pooled over


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            "run --model python:tinymodel:build --layer featurs --data npz:data.npz --out o",
            "unknown layer 'featurs'; did you mean 'features'",
        ),
        (
            "run --model python:tinymodel:build --layer head --data npz:data.npz --k 51 --out o",
            "k=51 is larger than the 50 examples",
        ),
        (
            "run --model python:tinymodel:build --layer head --data npz:missing.npz --out o",
            "missing.npz",
        ),
        (
            "run --model python:tinymodel:build --layer head --data npz:data.npz --directions random:0 --out o",
            "random",
        ),
        (["layers", "nosuch-model"], "unknown model 'nosuch-model'"),
        (["figures", "nowhere"], "not a complete dirscope run"),
    ],
)
def test_errors_are_one_line_with_status_2(project, capsys, args, message):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err


def test_counts_below_one_are_usage_errors_not_tracebacks(project, capsys):
    code, _, err = run_cli(
        "run --model python:tinymodel:build --layer head --data npz:data.npz --directions basis --k 2 --out runs/t -q",
        capsys,
    )
    assert code == 0, err
    for rows in ("-3", "0"):
        code, _, err = run_cli(["figures", "runs/t", "--rows", rows], capsys)
        assert code == 2 and err.startswith("error: Invalid value for '--rows'") and err.count("\n") == 1
    code, _, err = run_cli(
        "run --model python:tinymodel:build --layer head --data npz:data.npz --directions pca:2 "
        "--fit-samples -1 --out runs/p -q",
        capsys,
    )
    assert code == 2
    assert err == "error: Invalid value for '--fit-samples': -1 is not in the range x>=1; see `dirscope run --help`\n"
    code, _, err = run_cli("run --bogus", capsys)
    assert code == 2
    assert err == "error: No such option '--bogus'. (Did you mean one of: '--bins', '--no-figures', '--out'?); " + (
        "see `dirscope run --help`\n"
    )


def test_figures_api_refuses_no_rows(project, capsys):
    import dirscope
    from dirscope.errors import DirscopeError
    from dirscope.figures import write_figures

    run_cli("run --model python:tinymodel:build --layer head --data npz:data.npz --k 2 --out runs/t -q", capsys)
    with pytest.raises(DirscopeError, match="at least 1 row"):
        write_figures(dirscope.load(project / "runs/t"), project / "figs", n=-3)


def test_figures_of_a_run_without_images_is_one_line(tmp_path, capsys):
    """It printed nothing and exited 0, as if it had drawn the figures."""
    from torch import nn

    import dirscope

    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    dirscope.run(nn.Sequential(nn.Linear(6, 4)), ["0"], x, "basis", k=2, progress=False, out=str(tmp_path / "r"))
    code, out, err = run_cli(["figures", str(tmp_path / "r")], capsys)
    assert code == 2 and out == ""
    assert err == f"error: {tmp_path / 'r'} has no example images (its data is not image-like), so there are no " + (
        "figures to draw; its examples are in topk.parquet\n"
    )


def test_layers_of_a_text_model_keep_their_columns_and_probe_with_token_ids(project, capsys):
    """TransformerEncoderLayer's and out_proj's class names are longer than the type column was."""
    (project / "textmodel.py").write_text(
        textwrap.dedent("""
            import torch

            def build():
                torch.manual_seed(0)
                return torch.nn.Sequential(
                    torch.nn.Embedding(20, 8), torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
                )
        """)
    )
    code, out, err = run_cli(["layers", "python:textmodel:build", "--input-shape", "6"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    column = lines[0].index("output (per example)")
    assert all(line[column:].startswith(("[6, ", "did not run")) for line in lines[1:-1]), out
    assert "1.self_attn.out_proj" in out and "did not run" in out


def test_layers_of_a_model_without_submodules_is_one_line(project, capsys):
    (project / "baremodel.py").write_text(
        textwrap.dedent("""
            import torch

            class Bare(torch.nn.Module):
                def forward(self, x):
                    return x * 2

            def build():
                model = Bare()
                model.dirscope_input_shape = (4,)
                return model
        """)
    )
    code, _, err = run_cli(["layers", "python:baremodel:build"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model 'python:baremodel:build' has no hookable layers")


def test_unknown_metric_lists_every_accepted_metric(project, capsys):
    from dirscope.metrics import METRICS
    from dirscope.scoring import LABEL_FREE

    code, _, err = run_cli(["score", "runs/none", "--metric", "kurtosiss"], capsys)
    assert (
        code == 2
        and err.startswith("error: unknown metric 'kurtosiss'; did you mean 'kurtosis'")
        and err.count("\n") == 1
    )
    assert all(name in err for name in [*METRICS.names(), *LABEL_FREE])


def test_help_names_every_metric_sweep_and_the_layers_device(capsys):
    from dirscope.metrics import METRICS
    from dirscope.scoring import LABEL_FREE

    _, out, _ = run_cli(["score", "--help"], capsys)
    metric_help = " ".join(out[out.index("--metric") : out.index("--reference")].split())
    assert "wordnet_similarity" in metric_help and all(name in metric_help for name in [*METRICS.names(), *LABEL_FREE])
    _, out, _ = run_cli(["run", "--help"], capsys)
    assert "sweep:N" in out
    _, out, _ = run_cli(["layers", "--help"], capsys)
    assert "cpu or cuda[:N]" in " ".join(out[out.index("--device") :].split())


def test_fetch_from_a_missing_path_fails_even_when_the_data_is_there(tmp_path, monkeypatch, capsys):
    from dirscope.data.fetch import MNIST_NPZ

    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path))
    (tmp_path / MNIST_NPZ).write_bytes(b"already fetched")
    code, _, err = run_cli(["fetch", "mnist", "--from", str(tmp_path / "nonexistent.tgz")], capsys)
    assert code == 2 and err.startswith("error: --from") and "nonexistent.tgz: no such file" in err
    assert err.count("\n") == 1
    code, out, _ = run_cli(["fetch", "mnist"], capsys)
    assert code == 0 and MNIST_NPZ in out


def test_every_command_has_help(capsys):
    for command in ([], ["run"], ["layers"], ["fetch"], ["train"], ["figures"], ["demo"], ["sources"]):
        code, out, _ = run_cli([*command, "--help"], capsys)
        assert code in (0, None) and "Usage:" in out and len(out) > 100


def test_sources_lists_registries(capsys):
    code, out, _ = run_cli(["sources"], capsys)
    assert code in (0, None)
    for name in ("mnist-cnn", "python:ARG", "npz:ARG", "folder:ARG", "basis", "rotation", "pca:ARG"):
        assert name in out


def test_installed_entry_point_exit_status(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dirscope",
            "run",
            "--model",
            "x",
            "--layer",
            "y",
            "--data",
            "z",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model 'x'"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_with_score_prints_a_verdict(project, capsys):
    code, out, err = run_cli(
        "run --model python:tinymodel:build --layer head --data npz:data.npz --directions basis,random:6 --k 5 "
        "--out runs/s --quiet --score",
        capsys,
    )
    assert code == 0, err
    assert "label purity: units" in out and "=> " in out
    assert (project / "runs/s/verdict.json").exists() and (project / "runs/s/scores.parquet").exists()
    code, out, err = run_cli("score runs/s --metric kurtosis --no-plots --n-perm 200", capsys)
    assert code == 0, err
    assert "kurtosis: units" in out and "label purity" not in out
    code, _, err = run_cli(["score", "runs/s", "--compare", "basis"], capsys)
    assert code == 2 and "A:B" in err


@pytest.mark.parametrize(
    ("damage", "name"),
    [
        (lambda run: (run / "manifest.json").write_text('{"format": "dirscope-run/1", "lay'), "manifest"),
        (lambda run: (run / "directions" / "head.npy").write_bytes(b""), "empty direction file"),
        (lambda run: (run / "directions" / "head.npy").unlink(), "missing direction file"),
        (lambda run: (run / "topk.parquet").write_bytes((run / "topk.parquet").read_bytes()[:50]), "parquet"),
    ],
)
def test_a_damaged_run_directory_is_one_line(project, capsys, damage, name):
    code, _, err = run_cli(
        "run --model python:tinymodel:build --layer head --data npz:data.npz --directions basis,random:3 --k 3 "
        "--out runs/d --quiet --no-figures",
        capsys,
    )
    assert code == 0, err
    damage(project / "runs/d")
    code, _, err = run_cli(["figures", "runs/d"], capsys)
    assert code == 2 and err.startswith("error: run runs/d cannot be read (") and err.count("\n") == 1, name


def test_compare_splits_at_the_colon_between_two_families(project, capsys):
    code, _, err = run_cli(
        "run --model python:tinymodel:build --layer head --data npz:data.npz --directions basis,rotation:0.5,random:6 "
        "--k 5 --out runs/c --quiet",
        capsys,
    )
    assert code == 0, err
    compare = "--compare rotation:0.5:random"
    code, _, err = run_cli(f"score runs/c --metric kurtosis --no-plots --n-perm 50 {compare}", capsys)
    assert code == 0, err
    verdict = json.loads((project / "runs/c/verdict.json").read_text())
    assert {(r["family_a"], r["family_b"]) for r in verdict["comparisons"]} >= {("rotation:0.5", "random")}
    code, _, err = run_cli("score runs/c --no-plots --compare rotation:0.7:random", capsys)
    assert code == 2 and "no family 'rotation'" in err


def test_score_with_a_data_spec_that_cannot_load_fails_in_one_line(project, capsys):
    rng = np.random.default_rng(1)
    np.savez("digits.npz", x=rng.integers(0, 256, (60, 1, 28, 28)).astype(np.uint8), y=rng.integers(0, 10, 60))
    code, _, err = run_cli(
        "run --model mnist-cnn --layer fc1 --data npz:digits.npz --directions basis:4,random:4 --k 3 "
        "--null-sample 30 --out runs/d --quiet --no-figures",
        capsys,
    )
    assert code == 0, err
    fast = "--no-plots --n-boot 20 --n-perm 20 --null-draws 20"
    code, _, err = run_cli(f"score runs/d --data nope {fast}", capsys)
    assert code == 2 and err.startswith("error: unknown data source 'nope'") and err.count("\n") == 1
    # the default reference mnist-mlp@fc2 reads --data: a missing file fails instead of dropping the score
    code, _, err = run_cli(f"score runs/d --data npz:missing.npz --metric embedding_coherence {fast}", capsys)
    assert code == 2 and "reference 'mnist-mlp@fc2'" in err and "missing.npz" in err and err.count("\n") == 1
    code, out, err = run_cli(f"score runs/d --data npz:digits.npz --metric embedding_coherence {fast}", capsys)
    assert code == 0 and "skipped" not in out + err, err


def test_train_command_writes_a_checkpoint_the_run_can_load(project, capsys):
    code, out, err = run_cli("train mnist-mlp --out ckpt.safetensors --epochs 1 --seed 1", capsys)
    if code == 2 and "dirscope fetch mnist" in err:
        pytest.skip("MNIST digits not fetched")
    assert code == 0, err
    assert out.strip() == "wrote ckpt.safetensors"
    code, out, err = run_cli("layers mnist-mlp:ckpt.safetensors", capsys)
    assert code == 0 and "fc2.1" in out


def test_running_out_of_memory_is_one_line(project, capsys, monkeypatch):
    """e.g. --directions random:10000000000 asks numpy for 224 GiB: a MemoryError traceback before."""

    run_cli("run --model python:tinymodel:build --layer head --data npz:data.npz --k 2 --out runs/m -q", capsys)

    def too_big(*_args, **_kwargs):
        raise MemoryError("Unable to allocate 224. GiB for an array with shape (10000000000, 3) and data type float64")

    monkeypatch.setattr("dirscope.engine.run", too_big)
    code, _, err = run_cli("run --model python:tinymodel:build --layer head --data npz:data.npz --out runs/n", capsys)
    assert code == 2 and err.startswith("error: out of memory (Unable to allocate") and err.count("\n") == 1
    code, _, err = run_cli("score runs/m --null-draws 2000000", capsys)
    assert code == 2 and "--null-draws must be from 2 to 1,000,000" in err


def test_an_out_directory_in_use_is_refused_in_one_line_and_a_stale_lock_blocks_nothing(project, capsys):
    """Two runs into one --out both exited 0, leaving the manifest of one and the tables of the other."""
    import fcntl

    base = "run --model python:tinymodel:build --layer head --data npz:data.npz --directions basis --k 2 --quiet"
    run, scores = project / "runs/t", project / "runs/t/scores.parquet"
    assert run_cli(f"{base} --out runs/t", capsys)[0] == 0
    lock = run / ".dirscope.lock"
    assert not lock.exists()  # removed by the run that held it
    lock.write_text("4242\n")
    before = (run / "manifest.json").read_bytes()
    in_use = "error: runs/t is in use by another dirscope process (pid 4242); wait for it"
    with open(lock) as held:  # another process's lock, as the kernel sees it: a second open file
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_cli(f"{base} --out runs/t --overwrite --score", capsys)
        assert code == 2 and err == f"{in_use} or choose another --out\n"
        for args in ("score runs/t", "figures runs/t", "report runs/t", "study runs/t", "study score runs/t a.json"):
            code, _, err = run_cli(args, capsys)
            assert code == 2 and err == f"{in_use}\n", args
        with pytest.raises(DirscopeError, match="in use by another dirscope process"):
            Result.load(run).save(run, overwrite=True)
    assert (run / "manifest.json").read_bytes() == before and not scores.exists()
    assert lock.exists()  # as a killed holder leaves it: it blocks nothing, and is no content of the directory
    (project / "runs/u").mkdir()
    (project / "runs/u/.dirscope.lock").write_text("4242\n")
    for args in (f"{base} --out runs/t --overwrite --score", f"{base} --out runs/u", "score runs/u --no-plots"):
        code, _, err = run_cli(args, capsys)
        assert code == 0, (args, err)
    assert not lock.exists() and not (project / "runs/u/.dirscope.lock").exists()
    assert scores.exists() and (project / "runs/u/scores.parquet").exists()
