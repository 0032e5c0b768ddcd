"""`make demo`: Szegedy et al. section 3 on the built-in data, units against random directions, then the verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .data import load_data
from .engine import run
from .errors import DirscopeError
from .report import write_report

LAYERS = ["conv1", "conv2", "fc1"]  # the convnet's hidden layers
DIRECTIONS = "basis,random:64"
EXPERIMENTS = (
    # (name, model, data searched; the model never saw it in training)
    ("mnist", "mnist-cnn", "mnist"),
    ("fashion-mnist", "fashion-cnn", "fashion-mnist"),
)


def run_demo(out: Path, progress: bool = True) -> list[Path]:
    """Run each experiment whose data is present; return the side-by-side figures written."""
    figures, reports = [], []
    for name, model, data in EXPERIMENTS:
        try:
            load_data(data)
        except DirscopeError as exc:
            if name == "mnist":
                raise
            click.echo(f"skipping {name}: {exc}", err=True)
            continue
        click.echo(f"{name}: {model} on the held-out set, layers {', '.join(LAYERS)}, directions {DIRECTIONS}")
        result = run(model, LAYERS, data, DIRECTIONS, k=9, out=str(out / name), overwrite=True, progress=progress)
        side = [result.path / f for f in result.manifest["figures"] if f.endswith("side-by-side.png")]
        figures += side
        click.echo(f"  {result.manifest['n'][LAYERS[0]]} examples scanned in {result.manifest['wall_time_s']:.1f} s")
        verdict = result.score()
        click.echo(f"  scored in {verdict.settings['scoring_seconds']:.1f} s; verdict per layer (top-9 sets):")
        for layer, text in verdict.conclusions.items():
            click.echo(f"    {layer}: {text}")
        reports.append(write_report(result.path))
    click.echo("\nSzegedy-style figures (units left, random directions right):")
    for path in figures:
        click.echo(f"  {path}")
    click.echo("\nBrowsable reports (open in any browser, no network needed):")
    for path in reports:
        click.echo(f"  {path}")
    click.echo(f"all outputs: {out}/*/ (manifest.json, topk.parquet, stats.parquet, verdict.json, figures/)")
    sys.stdout.flush()
    return figures
