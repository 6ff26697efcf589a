"""gahb-scale command line: run | validate | status | query | report.

Thin on purpose: each command parses its arguments and calls the study layer. Anything the user
can fix ends in one message naming the field or file and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import signal
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

from . import __version__
from .errors import UserInputError, printable

EXIT_USER_ERROR, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _cell(value) -> str:
    """A value as `query` shows it: a float to 6 significant digits, so a small eigenvalue is not
    shown as 0 nor a rounded 86.5 as 86.5000, but whole where that would take an exponent (seconds
    summed); "n/a" for NaN and NULL alike."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.0f}" if "e+" in (text := f"{value:.6g}") else text
    return str(value)


def format_transition(rows: list[dict]) -> str:
    """The transition's key columns, at most 120 characters wide for the names of the studies in
    studies/; every column is in the `transition` table (`query`) and the report."""
    from .design.transition_columns import printed_columns
    from .design.trials import format_table

    columns = printed_columns()
    body = [[column.text(r) for column in columns]
            for r in sorted(rows, key=lambda r: (r["dataset"], r["architecture"], r["n"]))]
    return format_table([column.short for column in columns], body, align=">")


def cmd_validate(args) -> int:
    from .design.spec_file import load_spec
    from .design.trials import describe_trials

    missing: list[str] = []  # a preview needs no data: the grid and budget do not depend on it
    print(describe_trials(load_spec(args.spec, missing_folders=missing)))
    for folder in dict.fromkeys(missing):  # once per folder, however many datasets read it
        print(f"\nnote: dataset folder {printable(folder)} does not exist (relative paths resolve against the current "
              f"directory); `gahb-scale run` will refuse to start until it does")
    return 0


def study_spec(args, must_hold_results: bool):
    """The spec with its results folder: ROOT/<folder name> for --results ROOT, else the spec's
    storage.results_dir. Where --results itself holds the study (a study folder given as
    --results, its meaning up to version 0.5), that folder is used, with a note. With
    `must_hold_results` (status, report) a folder holding nothing of the study is an error
    naming it, not an empty study. Those two read only results: a dataset folder that is not
    on this machine is no error for them."""
    from .design.spec import results_folder_name
    from .design.spec_file import load_spec
    from .study.status import holds_results

    missing = [] if must_hold_results else None
    spec = load_spec(args.spec, results_root=args.results, missing_folders=missing)
    for folder in dict.fromkeys(missing or []):
        print(f"note: dataset folder {printable(folder)} is not here; only results are read. A folder's models are "
              f"named by its absolute path: this must be the path the study was run with (a relative path resolves "
              f"against the current directory: give the command from the one the study was run from)", file=sys.stderr)
    if args.results is None and not must_hold_results:
        return spec
    try:
        if holds_results(spec):
            return spec
        if args.results is not None:
            given = load_spec(args.spec, results_dir=args.results, missing_folders=missing)
            if holds_results(given):
                print(f"note: {printable(args.results)} is study {spec.name}'s own folder, used as such; --results "
                      f"names the results root, the folder above it (here: --results "
                      f"{printable(given.storage.results_root())})", file=sys.stderr)
                return given
    except OSError:
        if must_hold_results:
            raise
        return spec  # `run` checks a location it cannot read itself, and refuses it in its own words
    if must_hold_results:
        raise UserInputError(f"{printable(spec.storage.results_location())} holds no results of study {spec.name} "
                             f"(--results names the results root; the study's folder is <root>/"
                             f"{results_folder_name(spec.storage.results_location())})")
    return spec


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_run(args) -> int:
    spec = study_spec(args, must_hold_results=False)  # validate before Ray starts: a bad spec writes nothing
    from .study.progress import show_progress
    from .study.runner import StudyFailed, has_saved_work, run_study
    from .study.track import console_command, ui_command

    show_progress()
    # SIGTERM (`ray job stop`, `kill`) ends the run as Ctrl-C does: runs marked KILLED,
    # the study's run marker removed, finished work saved
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_study(spec, Path(args.spec).read_text(), address=args.address, verbose=args.verbose)
    except StudyFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        saved = (": finished work is saved; run the same command again to continue" if has_saved_work(spec)
                 else " before any result was saved")
        print(f"interrupted{saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    basis_chance = "/".join(sorted({f"{value:.3f}" for row in result["transition"]
                                    if (value := row["ab_basis_overlap_chance"]) is not None and math.isfinite(value)}))
    print()
    print(textwrap.fill(
        f"transition of study {spec.name}, key columns (means over models; gap = train minus test PSNR; A/B = "
        "same-seed samples of the two models of a split pair, cosine of centred images, and the overlap of their "
        "Jacobian bases; chance = the measure for images of the data that the model never saw, for the bases "
        f"k/P = {basis_chance or 'n/a'} (k eigenvectors of P pixels); switch N = between the last N that memorizes "
        "and the next). Every column: the transition table (SQL below) and the report; every measure's "
        "definition: docs/measures.md.", width=120))
    print(format_transition(result["transition"]))
    for row in result["transition"]:  # what the means above leave out, or rest on
        total = row["models"] * spec.sampling.num_samples
        told = [f"{row[key]} of {total} samples {what}" for key, what in (
            ("diverged_samples", "diverged (left out of every sample measure)"),
            ("capped_samples", "stopped by the sampler's step cap (sampling.max_steps) before the last noise level")) if row.get(key)]
        if told:
            print(f"note: {row['dataset']}/{row['architecture']} N = {row['n']}: {'; '.join(told)}")
    print()
    command = console_command("gahb-scale", "gahb_scale.cli")  # runnable as printed, from any folder
    results = args.results or spec.storage.results_root()
    results = shlex.quote(results if "://" in results else str(Path(results).resolve()))
    print(f"tables (Parquet):  {result['tables']}")
    print(f"SQL:               {command} query \"SELECT * FROM transition WHERE study_id = '{spec.name}'\" "
          f"--results {results}")
    print(f"progress:          {command} status {shlex.quote(str(Path(args.spec).resolve()))} --results {results}")
    ui = ui_command(result["mlflow_uri"])
    if ui.startswith("open "):
        print(f"MLflow UI:         {result['mlflow_url']}")
    else:
        print(f"MLflow UI:         {ui}")
        print(f"                   then open {result['mlflow_url']}")
    if result["report"]:
        print(f"report:            {result['report']}")
    return 0


def cmd_report(args) -> int:
    from .study.runner import report_study

    print(f"report: {report_study(study_spec(args, must_hold_results=True))}")
    return 0


def cmd_status(args) -> int:
    """Which models are trained, part-trained or not started, and which analysed; then one line per model."""
    from .study.status import others_note, study_progress

    spec = study_spec(args, must_hold_results=True)
    state, checkpointed, tables_written, run = study_progress(spec)
    counts = {"trained": 0, "part-trained": 0, "not started": 0}
    lines = []
    for trial in state.trials:
        if trial.trial_id in state.trained:
            state_of, detail = "trained", "trained"
        elif (step := checkpointed.get(trial.trial_id)) is not None:
            state_of = "part-trained"
            detail = f"part-trained (resumes at step {step}/{spec.training.steps_for(trial.n)})"
        else:
            state_of, detail = "not started", "not started"
        counts[state_of] += 1
        lines.append(f"{trial.trial_id}  {trial.dataset.name}/{trial.architecture.name} N={trial.n} pair={trial.pair} "
                     f"{trial.split} seed={trial.seed}: {detail}; "
                     f"{'analysed' if trial.trial_id in state.analysed else 'not analysed'}")
    resume = " (resume with `gahb-scale run`)" if counts["part-trained"] else ""
    print(f"study {spec.name} ({spec.storage.results_location()}): {len(state.trials)} models — {counts['trained']} "
          f"trained, {counts['part-trained']} part-trained{resume}, {counts['not started']} not started; "
          f"{len(state.analysed)} analysed; {len(state.compared)}/{len(state.by_pair)} split pairs compared; "
          f"study tables and report {tables_written}")
    if run is not None:
        print(f"running now: process {run['pid']} on {run['host']}, since {run['started']}")
    if state.others:
        print(others_note(state))
    print("\n".join([""] + lines))
    return 0


def cmd_query(args) -> int:
    from .design.trials import format_table
    from .study.query import run_query

    columns, rows = run_query(args.sql, args.results)
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif args.format == "json":  # one object per row; NaN (not JSON) as null
        print(json.dumps([{c: _json_value(v) for c, v in zip(columns, row)} for row in rows], default=str, indent=1))
    else:
        print(format_table(columns, [[_cell(v) for v in row] for row in rows], align=">"))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return 0


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):  # a SQL literal such as 1.5 or a cast: a number, not its text
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gahb-scale", description="Scaling studies of memorization and "
                                     "generalization in bias-free diffusion denoisers, on Ray.")
    parser.add_argument("--version", action="version", version=f"gahb-scale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    results_help = ("results root, a folder or a URI such as s3://bucket/prefix, holding the study in "
                    "<root>/<last part of storage.results_dir, by default the study's name> (without it: the study's "
                    "folder is storage.results_dir itself)")
    p = sub.add_parser("run", help="run (or continue) a study")
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--results", default=None, help=results_help)
    p.add_argument("--verbose", action="store_true", help="show Ray's own output here too (by default it goes "
                                                          "to a log file whose path is printed)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="check a spec and print its trial grid")
    p.add_argument("spec", help="study spec (YAML)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("status", help="what is done, running and missing in a study")
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument("--results", default=None, help=results_help)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("query", help="SQL over the Parquet tables of all studies under a results location")
    p.add_argument("sql", help="DuckDB SQL; each table is a view of every study's files (read-only: export with "
                                "--format csv or json)")
    p.add_argument("--results", default="results", help="results root, a folder or URI: every study at or below "
                                                         "it is queried (default: results)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table: aligned text (default); csv: a header row, then one row per result; json: an array "
                        "of objects, NaN as null")
    p.set_defaults(func=cmd_query)
    p = sub.add_parser("report", help="(re)build a study's HTML report with its figures and log it to MLflow")
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument("--results", default=None, help=results_help)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = getattr(args, "results", None)
        if results is not None and not results.strip():
            raise UserInputError("--results is empty: give a folder or a URI such as s3://bucket/prefix")
        if results is not None and "://" not in results and os.path.isfile(results):  # (False for a name too long)
            raise UserInputError(f"--results {printable(results)} is a file: it names the results root, a folder "
                                 f"that holds each study's folder (or a URI such as s3://bucket/prefix)")
        return args.func(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: before OSError, its base
        try:  # what is still buffered for stdout goes nowhere, not into a second error at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout that is no file
            pass
        return 0
    except OSError as exc:  # the results location: unreachable store, missing bucket, a file where a folder is
        print(f"error: results location (--results or storage.results_dir): {printable(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # `run` says itself whether work was saved
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
