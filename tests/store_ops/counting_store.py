"""Counts every operation a study makes on its results store, in every process of the run.

`install(folder)` wraps the filesystem of each `StudyStore` created afterwards in a pyarrow
filesystem that forwards every call and appends one line per operation (kind, method, path) to
`<folder>/<pid>.tsv`. Ray's workers get it through `sitecustomize.py` beside this file.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs

# what each filesystem call is, as a cost on object storage: a GET, a HEAD/LIST, or a PUT/DELETE
KINDS = {"open_input_stream": "read", "open_input_file": "read", "get_file_info": "check",
         "get_file_info_selector": "check", "create_dir": "write", "delete_dir": "write",
         "delete_dir_contents": "write", "delete_root_dir_contents": "write", "delete_file": "write",
         "move": "write", "copy_file": "write", "open_output_stream": "write", "open_append_stream": "write"}


class CountingHandler(pafs.FileSystemHandler):
    def __init__(self, fs: pafs.FileSystem, folder: str):
        self.fs, self.folder = fs, folder

    def __eq__(self, other):
        return isinstance(other, CountingHandler) and self.fs.equals(other.fs)

    def __ne__(self, other):
        return not self == other

    def __reduce__(self):  # Ray ships the store's filesystem to its Train workers
        return CountingHandler, (self.fs, self.folder)

    def _note(self, method: str, path: str) -> None:
        with open(f"{self.folder}/{os.getpid()}.tsv", "a") as log:
            log.write(f"{KINDS[method]}\t{method}\t{path}\n")

    def get_type_name(self):
        return f"counting+{self.fs.type_name}"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        for path in paths:
            self._note("get_file_info", path)
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self._note("get_file_info_selector", selector.base_dir)
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._note("create_dir", path)
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._note("delete_dir", path)
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._note("delete_dir_contents", path)
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self._note("delete_root_dir_contents", "/")
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self._note("delete_file", path)
        self.fs.delete_file(path)

    def move(self, src, dest):
        self._note("move", f"{src} -> {dest}")
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self._note("copy_file", f"{src} -> {dest}")
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        self._note("open_input_stream", path)
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self._note("open_input_file", path)
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._note("open_output_stream", path)
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        self._note("open_append_stream", path)
        return self.fs.open_append_stream(path, metadata=metadata)


def install(folder: str) -> None:
    from gahb_scale.study.store import StudyStore

    create = StudyStore.__init__

    def counted(self, results: str):
        create(self, results)
        self.fs = pafs.PyFileSystem(CountingHandler(self.fs, folder))

    StudyStore.__init__ = counted


def counts(folder: str | Path, leave_out: str | None = None) -> Counter:
    """Operations of each kind (read, check, write), over every process; without those on paths
    that hold `leave_out`."""
    return Counter(line.split("\t", 1)[0] for log in Path(folder).glob("*.tsv")
                   for line in log.read_text().splitlines() if leave_out is None or leave_out not in line)
