"""Bad and hostile input, as a new user or a careless script would give it: every case is refused
with its exit status and the field or file named, within a time limit, with no traceback and
nothing written; or it is handled correctly (16-bit images, a study with a single N).

Each case runs the command in this process (a refused command never starts Ray), under an alarm
that fails it if it takes longer than CASE_SECONDS (imports once per process are not counted). A case that needs a real process (Ctrl-C) runs
as a subprocess.
"""

from __future__ import annotations

import io
import math
import os
import signal
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image
from test_cli import micro

import gahb_scale.study.runner  # noqa: F401 - imported once here (Ray, torch): a case's time is its own work
from gahb_scale.cli import main
from gahb_scale.errors import printable
from gahb_scale.limits import MAX_INT_DIGITS

ROOT = Path(__file__).resolve().parents[1]
CASE_SECONDS = 10  # the bound on a refusal


# --------------------------------------------------------------------------------------------
# inputs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, after: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + idat + after + _chunk(b"IEND", b"")


def _corrupt_chunk_png() -> bytes:
    """A 32x32 PNG whose second data chunk has a broken type (Pillow raises SyntaxError)."""
    raw = zlib.compress(b"".join(b"\0" + bytes(range(32)) for _ in range(32)))
    return _png(32, 32, _chunk(b"IDAT", raw[:20]) + _chunk(b"\x00\x01\x02\x03", raw[20:]))


def _bomb_png() -> bytes:
    """The header of a 13,000 x 13,000 image (169 M pixels, under Pillow's own hard limit)."""
    return _png(13_000, 13_000, _chunk(b"IDAT", zlib.compress(bytes(13_001))))


def _image_folder(root: Path, count: int = 12, extra: dict[str, bytes] | None = None, copies: int = 0) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    images = [(rng.random((24, 24)) * 255).astype(np.uint8) for _ in range(count)]
    for i, image in enumerate(images + images[:copies]):
        Image.fromarray(image).save(root / f"{i:03d}.png")
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def _folder_spec(tmp: Path, extra: dict[str, bytes] | None = None, copies: int = 0, **changes) -> dict:
    folder = _image_folder(tmp / "faces", extra=extra, copies=copies)
    return micro(tmp, datasets=[{"name": "faces", "kind": "folder", "params": {"path": str(folder)}}], **changes)


def _alias_bomb() -> str:
    """The "billion laughs": ten anchored lists of ten aliases each, used as the description."""
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "name: bomb\nanchors: [" + ", ".join(levels) + "]\ndescription: *a9\n"


def _spec_text(text: str) -> Callable[[Path], str]:
    return lambda tmp: text


def _changed(**changes) -> Callable[[Path], str]:
    return lambda tmp: yaml.safe_dump(micro(tmp, **changes))


def _with_value(dotted: str, literal: str) -> Callable[[Path], str]:
    """The micro spec with one field written as raw YAML (a value safe_dump could not write)."""
    def make(tmp: Path) -> str:
        data = micro(tmp)
        *path, last = dotted.split(".")
        target = data
        for key in path:
            target = target[key]
        target[last] = "@@"
        return yaml.safe_dump(data).replace("'@@'", literal)
    return make


def _folder(**kwargs) -> Callable[[Path], str]:
    return lambda tmp: yaml.safe_dump(_folder_spec(tmp, **kwargs))


# --------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Case:
    id: str
    spec: Callable[[Path], str]  # the spec file's text, given the test's folder
    command: tuple[str, ...] = ("validate", "SPEC")  # SPEC and TMP are replaced
    code: int = 2
    words: tuple[str, ...] = ()  # each must appear in the message
    setup: Callable[[Path], None] = field(default=lambda tmp: None)
    env: dict[str, str] = field(default_factory=dict)


RUN = ("run", "SPEC")
CASES = [
    # three hangs
    *[Case(f"alias-bomb-{cmd}", _spec_text(_alias_bomb()), (cmd, "SPEC"), words=("aliases are expanded",))
      for cmd in ("validate", "run", "status", "report")],
    Case("recursive-alias", _spec_text("name: x\ndescription: &a [*a]\n"), words=("refers to a node that contains it",)),
    Case("split-pairs-1e8", _changed(split_pairs=100_000_000), words=("split_pairs",)),
    Case("grid-too-large", _changed(train_sizes=list(range(1, 1001)), seeds=list(range(100))),
         words=("train_sizes", "100,000")),
    Case("address-refused", _changed(), ("run", "SPEC", "--address", "127.0.0.1:1"),
         words=("no Ray cluster at 127.0.0.1:1",)),
    Case("address-malformed", _changed(), ("run", "SPEC", "--address", "nowhere"), words=("--address",)),
    # six tracebacks
    Case("steps-1e400", _with_value("training.steps", "1" + "0" * 400), words=(f"{MAX_INT_DIGITS} digits", "line")),
    Case("int-5000-digits", _with_value("test_images", "9" * 5000), words=(f"{MAX_INT_DIGITS} digits",)),
    Case("sexagesimal-int", _with_value("test_images", ":".join(["59"] * 40)), words=("digits",)),
    Case("png-corrupt-chunk", _folder(extra={"bad.png": _corrupt_chunk_png()}), RUN,
         words=("bad.png", "SyntaxError")),
    Case("kernel-size-2", _changed(architectures__0__params={"width": 4, "blocks": 1, "kernel_size": 2}),
         RUN, words=("architectures[0].params", "cannot run on a 12x12 image")),
    Case("image-size-1e9", _changed(image_size=1_000_000_000), RUN, words=("image_size", "4096")),
    # files written before refusing
    Case("pool-too-small", _folder(copies=3, train_sizes=[6], test_images=2), RUN,
         words=("'faces'", "near-duplicates")),
    Case("folder-resources", _folder(resources__cpus_per_trial=1000), RUN, words=("cpus_per_trial",)),
    Case("gpus-missing", _changed(resources__gpus_per_trial=64), RUN, words=("gpus_per_trial",)),
    Case("name-300", _changed(name="x" * 300), RUN, words=("name", "100 characters")),
    # accepted, though they cannot work
    Case("sampling-seed-1e30", _with_value("sampling.seed", str(10**30)), words=("digits",)),
    Case("sampling-seed-2e40", _changed(sampling__seed=2**40), words=("sampling.seed",)),
    Case("pixel-shuffle-seed", _changed(datasets__0__pixel_shuffle_seed=2**40), words=("pixel_shuffle_seed",)),
    Case("batch-size-1e12", _changed(training__batch_size=10**12), words=("training.batch_size",)),
    Case("train-size-1e12", _changed(train_sizes=[1, 10**12]), words=("train_sizes",)),
    Case("steps-true", _changed(training__steps=True), words=("training.steps", "boolean")),
    Case("seeds-true", _changed(seeds=[True]), words=("seeds", "boolean")),
    Case("width-true", _changed(architectures__0__params={"width": True}), words=("width", "boolean")),
    Case("network-too-large", _changed(architectures__0__params={"width": 100_000}),
         words=("architectures[0].params", "parameters")),
    # data handling
    Case("decompression-bomb", _folder(extra={"huge.png": _bomb_png()}), RUN,
         words=("huge.png", "13000x13000", "before decoding")),
    Case("newline-in-file-name", _folder(extra={"bad\nerror: all is well.png": b"junk"}), RUN,
         words=("bad\\nerror: all is well.png",)),
    # messages
    Case("results-empty", _changed(), ("run", "SPEC", "--results", ""), words=("--results",)),
    Case("results-under-a-file", _changed(), ("run", "SPEC", "--results", "TMP/a-file/out"),
         words=("--results", "not a folder"), setup=lambda tmp: (tmp / "a-file").write_text("x")),
    Case("results-dir-root", _changed(storage__results_dir="/"), words=("storage.results_dir", "filesystem root")),
    Case("results-dir-busy", _changed(storage__results_dir="TMP/project"), RUN,
         words=("storage.results_dir", "notes.txt", "no study's results"),
         setup=lambda tmp: (tmp / "project").mkdir() or (tmp / "project" / "notes.txt").write_text("x")),
    Case("jacobian-images-over-test-images", _changed(analysis__jacobian_images=9, test_images=8),
         words=("analysis.jacobian_images", "test_images = 8")),
    Case("tracking-uri-a-folder", _changed(storage__mlflow_tracking_uri="mlruns"),
         words=("storage.mlflow_tracking_uri", "sqlite:///")),
    Case("tracking-uri-unknown-scheme", _changed(storage__mlflow_tracking_uri="ftp://host/x"),
         words=("storage.mlflow_tracking_uri", "http(s)://")),
    Case("tracking-server-refused", _changed(storage__mlflow_tracking_uri="http://127.0.0.1:1"), RUN,
         words=("storage.mlflow_tracking_uri", "no tracking server answers at http://127.0.0.1:1")),
    Case("tracking-env-a-folder", _changed(), RUN, words=("MLFLOW_TRACKING_URI", "file store"),
         env={"MLFLOW_TRACKING_URI": "mlruns"}),
    Case("results-path-too-long", _changed(), ("run", "SPEC", "--results", "TMP/" + "/".join(["d" * 200] * 20)),
         words=("--results", "too long")),
    # what already held
    Case("yaml-malformed", _spec_text("name: x\n  image_size: [16\n"), words=("line",)),
    Case("yaml-python-tag", _spec_text("name: !!python/object/apply:os.system ['touch TMP/pwned']\n"),
         words=("line", "python/object")),
    Case("yaml-duplicate-key", _spec_text("name: a\nname: b\n"), words=("duplicate key",)),
    Case("yaml-too-deep", _spec_text("description: " + "[" * 5000 + "]" * 5000 + "\n"), words=("nested",)),
    Case("spec-too-large", _spec_text("description: '" + "x" * (2**20 + 10) + "'\n"), words=("bytes",)),
    Case("spec-not-a-mapping", _spec_text("- 1\n- 2\n"), words=("mapping",)),
    Case("spec-missing", _spec_text(""), ("validate", "TMP/absent.yaml"), words=("absent.yaml",)),
    Case("wrong-type", _changed(image_size="big"), words=("image_size",)),
    Case("unknown-key", _changed(trainig={"steps": 3}), words=("trainig", "training")),
    Case("long-string-value", _changed(datasets__0__kind="k" * 100_000), words=("datasets[0].kind",)),
    Case("folder-missing", lambda tmp: yaml.safe_dump(micro(tmp, datasets=[
        {"name": "f", "kind": "folder", "params": {"path": str(tmp / "nope")}}])), RUN, words=("nope",)),
    Case("folder-empty", lambda tmp: (tmp / "empty").mkdir() or yaml.safe_dump(micro(tmp, datasets=[
        {"name": "f", "kind": "folder", "params": {"path": str(tmp / "empty")}}])), RUN, words=("no image files",)),
    Case("image-truncated", _folder(extra={"cut.png": _corrupt_chunk_png()[:60]}), RUN, words=("cut.png",)),
    Case("image-fake", _folder(extra={"fake.jpg": b"GIF89a not a jpeg"}), RUN, words=("fake.jpg",)),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() or p.is_dir()}


class _TimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise _TimedOut(f"took more than {CASE_SECONDS} s")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_at_once_without_output(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default results folder (results/<name>) lands here too
    case.setup(tmp_path)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    spec = tmp_path / "spec.yaml"
    spec.write_text(case.spec(tmp_path).replace("TMP", str(tmp_path)))
    argv = [arg.replace("SPEC", str(spec)).replace("TMP", str(tmp_path)) for arg in case.command]
    before = _tree(tmp_path)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in out + err and len(err) < 3000  # one message, not a dump of the input
    for word in case.words:
        assert word in err, err
    assert not any(line.startswith("error: all is well") for line in err.splitlines())
    assert _tree(tmp_path) == before  # nothing written, not even a cache


def test_an_address_that_is_no_tracking_server_is_refused_before_anything_is_written(tmp_path, capsys):
    """A web server that is not MLflow's (here one answering 404 to everything): MLflow's own
    refusal, in one line, before the study writes a file."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    (tmp_path / "site").mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "site")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}"
        spec = tmp_path / "spec.yaml"
        spec.write_text(yaml.safe_dump(micro(tmp_path, storage={"results_dir": str(tmp_path / "out"),
                                                                "mlflow_tracking_uri": address})))
        assert main(["run", str(spec)]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert f"MLflow at {address}: " in err and "404" in err and "Traceback" not in err and len(err) < 1000
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_before_anything_is_written_exits_130_without_claiming_saved_work(tmp_path, monkeypatch, capsys):
    from gahb_scale.study import runner

    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "prepare_datasets", interrupted)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path)))
    assert main(["run", str(spec)]) == 130
    err = capsys.readouterr().err
    assert "interrupted before any result was saved" in err and "finished work is saved" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_a_real_process_exits_130(tmp_path, sent):
    """A real SIGINT while `run` is busy before anything is written (a stage made to never end); or
    SIGTERM, as `ray job stop` sends it, which ends the run the same way."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path)))
    script = ("import sys, time; from gahb_scale.study import runner\n"
              "runner.prepare_datasets = lambda spec: (print('preparing', file=sys.stderr, flush=True), time.sleep(600))\n"
              "from gahb_scale.cli import main; sys.exit(main(['run', sys.argv[1]]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT as in a terminal: a suite started in the background (`make test &`) ignores it, and
    # its children would inherit that
    process = subprocess.Popen([sys.executable, "-c", script, str(spec)], stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stderr.readline() == "preparing\n"
        process.send_signal(sent)
        _, err = process.communicate(timeout=CASE_SECONDS)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted before any result was saved" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# handled correctly


def test_16_bit_grey_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    from gahb_scale.data.image_folder import load_image_folder

    folder = tmp_path / "deep"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(folder / "ramp.png")
    assert Image.open(folder / "ramp.png").mode.startswith("I")  # a 16-bit file indeed
    (grey,) = load_image_folder(folder, 32, near_duplicate_threshold=None).grey[:, 0]
    expected = (ramp.astype(np.int64) * 255 + 32767) // 65535  # v / 257, rounded
    assert np.abs(grey.astype(int) - expected).max() <= 1  # the bicubic resize to the same size
    assert (grey == 255).mean() < 0.1  # clipping at 255 made 97% of this ramp white


def test_a_single_n_study_draws_its_memorization_over_time():
    from gahb_scale.figures import memorization_time_figure

    for f_mem in (math.nan, 0.5):  # N = 1: f_mem is undefined
        rows = [{"dataset": "d", "architecture": "a", "n": 1, "step": step,
                 **{f"{name}{end}": f_mem for name in ("f_mem", "f_mem_scale_free") for end in ("", "_low", "_high")}}
                for step in (5, 10)]
        for onset_step in (5, None):
            onset = [{"dataset": "d", "architecture": "a", "n": 1, "onset_step": onset_step, "onset_f_mem": 0.5}]
            assert Image.open(io.BytesIO(memorization_time_figure(rows, onset, "single N"))).size[0] > 0


def test_printable_escapes_what_would_break_a_line():
    assert printable("a\nerror: b\x1b[31m") == "a\\nerror: b\\x1b[31m"
    assert printable("visage é.png") == "visage é.png"
