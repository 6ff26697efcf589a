"""The README and docs/ stay true: every `gahb-scale` command they show parses with the real CLI on a
spec that exists (and `validate` runs), every table, column and measure they name is one the study
writes, the cost of each shipped spec reads the same in its header and in the README, links lead to
files that exist, and no table row is too long to read.

Running the documented queries and comparing tables.md with a finished study's tables needs a study
that ran: `problems_against_results` is called by the micro study's integration test, which has one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
from test_cluster_manifests import _gahb_commands

from gahb_scale.cli import build_parser, main
from gahb_scale.design.spec_file import load_spec
from gahb_scale.design.transition_columns import markdown_table
from gahb_scale.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
STUDIES = REPO / "studies"
# tables a finished micro study does not write, and why
NOT_IN_MICRO = {"shuffle_psnr": "micro has no pixel-shuffled dataset"}
MAX_TABLE_ROW = 200
COST = re.compile(r"^# Cost: (.+?)(?= \(|[.;:](?:\s|$)|$)", re.M)


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file name, argv after `gahb-scale`) of every gahb-scale command in a shell block of the docs."""
    return [(path.name, argv) for path in DOCS for block in _shell_blocks(path.read_text())
            for argv in _gahb_commands(block)]


def table_sections() -> dict[str, str]:
    """table -> its section of docs/tables.md, from below its heading to the next heading."""
    sections = re.split(r"^### `(\w+)`\n", (REPO / "docs" / "tables.md").read_text(), flags=re.M)[1:]
    return {table: body.split("\n## ", 1)[0] for table, body in zip(sections[::2], sections[1::2])}


def documented_columns() -> dict[str, set[str]]:
    """table -> the columns docs/tables.md lists for it: the `names` of each bullet before its colon,
    or of each row of its column table (the first cell)."""
    columns = {}
    for table, body in table_sections().items():
        bullets = re.split(r"^- ", body.replace("\n  ", " "), flags=re.M)[1:]
        columns[table] = {name for bullet in bullets for name in re.findall(r"`(\w+)`", bullet.split(": ", 1)[0])}
        columns[table] |= set(re.findall(r"^\| `(\w+)` \|", body, re.M))
    return columns


def spec_field_tables() -> str:
    """Every field of a study spec with its default and description, section by section, as the
    spec's pydantic models give them: the tables of docs/spec.md's "Every field"."""
    from pydantic_core import PydanticUndefined

    from gahb_scale.design.spec import AnalysisSpec, ResourceSpec, SamplingSpec, StorageSpec, StudySpec, TrainingSpec

    parts = []
    for section, model in (("top level", StudySpec), ("training", TrainingSpec), ("sampling", SamplingSpec),
                           ("analysis", AnalysisSpec), ("resources", ResourceSpec), ("storage", StorageSpec)):
        rows = ["| field | default | what it is |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            if section == "top level" and name in ("training", "sampling", "analysis", "resources", "storage"):
                continue
            if field.default is PydanticUndefined and field.default_factory is None:
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = f"`{value if isinstance(value, str) and value else json.dumps(value)}`"  # as YAML reads it
            rows.append(f"| `{name}` | {default} | {field.description or ''} |")
        parts.append(f"#### {section}\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def test_every_spec_field_is_in_the_docs_with_its_default():
    text = (REPO / "docs" / "spec.md").read_text()
    section = text.split("### Every field\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    assert spec_field_tables() in section, spec_field_tables()


def test_the_transition_columns_are_the_registry_s():
    """docs/tables.md lists the transition table's columns as the one column registry renders them,
    so the two cannot drift apart."""
    rows = [line for line in table_sections()["transition"].splitlines() if line.startswith("|")]
    assert "\n".join(rows) == markdown_table()


def _parse(argv: list[str]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"gahb-scale {' '.join(argv)}: the CLI rejects it: {stderr.getvalue().strip()}")


def test_the_docs_show_every_command():
    assert {argv[0] for _, argv in documented_commands()} == {"validate", "run", "status", "query", "report"}


@pytest.mark.parametrize("where,argv", documented_commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_documented_command_parses_on_a_spec_that_loads(where, argv):
    args = _parse(argv)
    if args.command == "query":
        return  # its SQL runs against a finished study: problems_against_results
    spec = REPO / args.spec
    assert spec.is_file(), f"{where}: gahb-scale {' '.join(argv)}: no spec {args.spec} in the repository"
    if args.command == "validate":  # cheap: it runs
        assert main(argv[:1] + [str(spec)]) == 0
        return
    try:
        load_spec(spec, results_root=getattr(args, "results", None), missing_folders=[])
    except UserInputError as exc:
        raise AssertionError(f"{where}: gahb-scale {' '.join(argv)}: {exc}")


def test_every_measure_and_key_column_is_a_documented_column():
    columns = set().union(*documented_columns().values())
    measures = re.findall(r"^### (.+)$", (REPO / "docs" / "measures.md").read_text(), re.M)
    named = {name for heading in measures for name in re.findall(r"`(\w+)`", heading)} - set(documented_columns())
    readme = (REPO / "README.md").read_text()
    key = readme[readme.index("**The five key columns**"):].split("\n\n", 2)[1]
    key_columns = re.findall(r"^- `(\w+)`", key, re.M)
    assert len(key_columns) == 5
    assert sorted((named | set(key_columns)) - columns) == []


def spec_costs() -> dict[str, str]:
    """The measured cost each shipped spec's header states: its `# Cost:` line up to the first note."""
    costs = {}
    for path in sorted(STUDIES.glob("*.yaml")):
        header = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#"))
        found = COST.search(header)
        assert found, f"{path.name}: its header states no '# Cost: ...'"
        costs[path.stem] = found.group(1)
    return costs


def test_the_readme_costs_are_the_spec_headers_costs():
    """One source for each cost: the README's cost table reads what the spec's header says."""
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", readme, re.M)
    readme_costs = {name: cost for name, cost in rows if (STUDIES / f"{name}.yaml").is_file()}
    assert readme_costs == spec_costs()


def test_links_lead_to_files_that_exist():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[\w-]+)?\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.name}: {target}")
    assert broken == []


def test_no_table_row_is_too_long_to_read():
    long_rows = [f"{path.name}: {line[:60]}... ({len(line)} characters)" for path in DOCS
                 for line in path.read_text().splitlines() if line.startswith("|") and len(line) > MAX_TABLE_ROW]
    assert long_rows == []


def test_the_quick_start_and_its_output_are_within_the_first_60_lines():
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:60])
    assert "## Quick start" in head and "make demo" in head
    assert re.search(r"^  discs  unet_small  1000 ", head, re.M), "the expected table of `make demo`"


def problems_against_results(root: Path) -> list[str]:
    """What the docs say that a finished study under the results root `root` contradicts: a
    documented query that fails, a table or column of docs/tables.md the study does not write, or one
    it writes that the docs do not list. Tables in NOT_IN_MICRO are left out."""
    import duckdb

    problems = []
    for where, argv in documented_commands():
        if argv[0] == "query":
            query = _parse(argv)
            with contextlib.redirect_stdout(io.StringIO()):
                if main(["query", query.sql, "--results", str(root)]) != 0:
                    problems.append(f"{where}: gahb-scale {' '.join(argv)} fails on a finished study")
    tables = {p.parent.name for p in root.glob("*/tables/*/*")}
    for table, documented in documented_columns().items():
        if table in NOT_IN_MICRO:
            continue
        if table not in tables:
            problems.append(f"docs/tables.md: table {table} is not written by a finished study")
            continue
        files = f"{root}/*/tables/{table}/**/*.parquet"
        written = {row[0] for row in duckdb.sql(
            f"DESCRIBE SELECT * FROM read_parquet('{files}', union_by_name = true)").fetchall()}
        problems += [f"docs/tables.md: {table}.{c} is not written" for c in sorted(documented - written)]
        problems += [f"docs/tables.md: {table}.{c} is written but not listed" for c in sorted(written - documented)]
    problems += [f"a finished study writes table {t}, which docs/tables.md does not list"
                 for t in sorted(tables - set(documented_columns()))]
    return problems


def test_the_notebook_example_runs(capsys):
    """docs/internals.md's example of the core without a study, at a few steps and a small N (its
    numbers are those of the full run, which takes minutes)."""
    text = (REPO / "docs" / "internals.md").read_text()
    section = text.split("### The core from a notebook", 1)[1]
    code = re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)
    recipe = "((2, 3000, 500), (1024, 800, 300))"
    assert recipe in code
    exec(compile(code.replace(recipe, "((2, 20, 500), (64, 20, 300))"), "internals.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["N = 2", "N = 64"]
    for line in printed:  # f_mem and its chance are shares, the cosines cosines
        f_mem, f_mem_chance, ab, ab_chance = (float(x) for x in re.findall(r"(-?\d+\.\d+|nan)", line))
        assert 0 <= f_mem <= 1 and 0 <= f_mem_chance <= 1 and -1 <= ab <= 1 and -1 <= ab_chance <= 1, line


def test_the_design_example_runs(capsys, tmp_path):
    """docs/internals.md's example of a study's design without a study, on the smoke spec cut to a
    few steps and samples."""
    section = (REPO / "docs" / "internals.md").read_text().split("### A study's design from a notebook", 1)[1]
    code = re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)
    smoke = (REPO / "studies" / "smoke.yaml").read_text()
    assert "  steps: 400\n" in smoke and "  num_samples: 32\n" in smoke and '"studies/smoke.yaml"' in code
    (tmp_path / "smoke.yaml").write_text(smoke.replace("  steps: 400\n", "  steps: 10\n")
                                         .replace("  num_samples: 32\n", "  num_samples: 3\n"))
    exec(compile(code.replace('"studies/smoke.yaml"', repr(str(tmp_path / "smoke.yaml"))), "internals.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["N = 1, model A", "N = 1, model B"]
    for line in printed:
        assert "3 samples, ['eigen_spectrum.png', 'eigenvectors.png', 'psnr_curves.png']" in line, line


def test_the_example_measuring_a_trained_model_runs(capsys, tmp_path, monkeypatch):
    """docs/internals.md's example that measures a model the study trained, on a model file of the
    smoke spec's first N = 10 model written here (untrained) where the demo would leave it."""
    import torch

    from gahb_scale.design.trials import expand_trials, initial_model

    section = (REPO / "docs" / "internals.md").read_text().split("A model the study trained is measured", 1)[1]
    code = re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)
    spec = load_spec(REPO / "studies" / "smoke.yaml")
    trial = expand_trials(spec)[2]
    assert trial.n == 10 and trial.split == "A"
    (tmp_path / "results" / "smoke" / "models" / trial.trial_id).mkdir(parents=True)
    torch.save({"state_dict": initial_model(spec, trial)[0].state_dict(), "step": 0},
               tmp_path / "results" / "smoke" / "models" / trial.trial_id / "model.pt")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "smoke.yaml").write_text((REPO / "studies" / "smoke.yaml").read_text()
                                                     .replace("  num_samples: 32\n", "  num_samples: 3\n"))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        exec(compile(code, "internals.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(float(capsys.readouterr().out))  # the PSNR gap

