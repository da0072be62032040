"""Peak memory of ``phalanx map`` while one job prints 2 GiB, with the output captured.

One job, ``yes 1xxx...x | head -c 2G`` (64-byte lines: ``1``, 62 ``x``, a newline; ``{}`` in
the template is where the ``1`` comes from, so that no argument is appended to ``head``), run
as ``phalanx map -j 1 <job> ::: 1`` in the ways that make phalanx keep the output, each as a
command of its own:

* ``grouped``: the default, the job's output printed whole once it ends;
* ``-k``: in input order;
* ``--line-buffer``: whole lines as they come;
* ``--results DIR``: GNU parallel's tree, the output in ``DIR/1/1/stdout``;
* ``--results F.jsonl``: one JSON record holding the whole output as a string.

phalanx's standard output is a pipe that this benchmark drains (reads and discards), never
``/dev/null``: output to ``/dev/null`` with no ``--results`` may be handed to the job as it is,
with nothing captured, which measures nothing. The ``--results`` rows print nothing, and the
pipe is drained all the same.

Peak RSS, two ways, both of phalanx's processes and not of this benchmark:

* ``wait4``: the ``ru_maxrss`` that ``os.wait4`` returns for the phalanx process, the largest
  peak RSS of that process and of every process it waited for (its jobs and helpers). The
  job's processes (``sh``, ``yes``, ``head``) hold a megabyte or two each, so the largest is
  phalanx's own; the target uses this one, the larger of the two.
* ``VmHWM``: the high-water mark of the phalanx process alone, read from
  ``/proc/<pid>/status`` at least every 50 ms while it runs (the last reading before it exits;
  whatever it allocates after that is not seen).

A child started by ``vfork`` (as ``subprocess`` starts one) counts its parent's peak in its
``ru_maxrss`` until it execs, so ``wait4`` can only be too high, never too low, by this
benchmark's own peak (the header prints it; it is far below phalanx's), and ``VmHWM``, which
belongs to the process's own memory after the exec, cross-checks it.

For reference, the first row is ``phalanx map true ::: 1``, the RSS of a run with no output.
Before measuring, every row runs once with 1 MiB of output, and its output (printed, in the
``stdout`` file, or in the JSON record) must be exactly the job's; in the measured runs the
bytes drained (or the size of the results file) must match the flood's size and phalanx must
exit 0. Each row runs once: the peak of a deterministic run varies little, and a 2 GiB run
takes a few seconds. Commands run with Python's bytecode cache on (as in
``map_overhead.py``), in a temp directory that also holds their run journal.

Target (issue #14): phalanx's peak RSS under 150 MB (10^6 bytes) on every row. The exit status
is 0 whether or not the target is met (this is a report); it is 1 if a run fails.

Run it from the repository root::

    python benchmarks/map_flood.py                    # 2 GiB per row, a minute or two
    python benchmarks/map_flood.py --quick            # 256 MiB per row: a smoke test
    python benchmarks/map_flood.py --flood-bytes 512M
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from map_overhead import table  # its sibling's table layout (run from the repository root: benchmarks/ is on the path)

FLOOD_BYTES = 2 * 1024**3
QUICK_FLOOD_BYTES = 256 * 1024**2
CHECK_BYTES = 1024**2
LINE = "1" + "x" * 62 + "\n"
TARGET_MB = 150.0
SAMPLE_SECONDS = 0.05
CHUNK = 1 << 20
UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


class RunFailed(Exception):
    """phalanx did not run the job, or its output is not the job's."""


def phalanx_command() -> list[str]:
    """How to start phalanx: the console script beside this interpreter if there is one."""
    script = Path(sys.executable).with_name("phalanx")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "phalanx"]


PHALANX = phalanx_command()

# Python's bytecode cache on, in a directory of our own (see map_overhead.py); `main` fills it in.
ENV: dict[str, str] = {}


def flood_job(size: int) -> str:
    return f"yes {{}}{'x' * 62} | head -c {size}"


def expected_output(size: int) -> bytes:
    return (LINE * (size // len(LINE) + 1)).encode()[:size]


@dataclass(frozen=True, slots=True)
class Row:
    """One way of running the flood: its label, the options it adds (given a fresh scratch
    directory), and where the output ends up: ``stdout``, ``dir`` or ``jsonl``."""

    label: str
    options: Callable[[Path], list[str]]
    output_in: str = "stdout"


ROWS = (
    Row("grouped", lambda _: []),
    Row("-k", lambda _: ["-k"]),
    Row("--line-buffer", lambda _: ["--line-buffer"]),
    Row("--results DIR", lambda scratch: ["--results", str(scratch / "results")], "dir"),
    Row("--results F.jsonl", lambda scratch: ["--results", str(scratch / "out.jsonl")], "jsonl"),
)


@dataclass(frozen=True, slots=True)
class Measured:
    """One run: wall seconds, stdout bytes drained, and the peaks in KiB."""

    wall: float
    drained: int
    maxrss_kib: int
    vm_hwm_kib: int


def vm_hwm_kib(pid: int) -> int:
    """The process's RSS high-water mark, 0 once it is gone (a zombie has no VmHWM line)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_measured(argv: list[str], cwd: Path, keep: bytearray | None = None) -> Measured:
    """Run ``argv`` with its stdout drained from a pipe (into ``keep`` if given); RunFailed unless it exits 0."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd, env=ENV)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        drained = hwm = 0
        sampled = 0.0
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                if time.perf_counter() - sampled >= SAMPLE_SECONDS:
                    hwm = max(hwm, vm_hwm_kib(proc.pid))
                    sampled = time.perf_counter()
                # The timeout is what samples a run that prints nothing (--results).
                if not selector.select(timeout=SAMPLE_SECONDS):
                    continue
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                drained += len(chunk)
                if keep is not None:
                    keep += chunk
        hwm = max(hwm, vm_hwm_kib(proc.pid))
        proc.stdout.close()
        # wait4, not Popen.wait: it returns the peak RSS of this child (and what it reaped).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        wall = time.perf_counter() - start
        if proc.returncode:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip()[-500:]
            raise RunFailed(f"{' '.join(argv)}: exit status {proc.returncode}: {tail}")
    return Measured(wall, drained, usage.ru_maxrss, hwm)


def results_output(row: Row, scratch: Path) -> tuple[int, bytes | None]:
    """The size of the job's output as the results hold it, and the output itself if small."""
    if row.output_in == "dir":
        files = list((scratch / "results").rglob("stdout"))
        if len(files) != 1:
            raise RunFailed(f"{row.label}: {len(files)} stdout files under the results directory")
        size = files[0].stat().st_size
        return size, files[0].read_bytes() if size <= CHECK_BYTES else None
    path = scratch / "out.jsonl"
    size = path.stat().st_size
    if size > 2 * CHECK_BYTES:
        return size, None  # a JSON line of the whole flood: its size, not its parse
    lines = path.read_bytes().splitlines()
    if len(lines) != 1:
        raise RunFailed(f"{row.label}: {len(lines)} records for one job")
    output = str(json.loads(lines[0])["stdout"]).encode()
    return len(output), output


def run_row(row: Row, size: int, directory: Path, *, check: bool) -> Measured:
    """Flood ``size`` bytes through ``row``; with ``check``, the output must be the job's, byte for byte."""
    scratch = Path(tempfile.mkdtemp(prefix="flood-", dir=directory))
    try:
        argv = [*PHALANX, "map", "-j", "1", *row.options(scratch), flood_job(size), ":::", "1"]
        kept = bytearray() if check and row.output_in == "stdout" else None
        measured = run_measured(argv, directory, kept)
        if row.output_in == "stdout":
            got_size, got = measured.drained, None if kept is None else bytes(kept)
        else:
            got_size, got = results_output(row, scratch)
        # A JSON record too big to parse is checked by its size: escapes only make it longer.
        size_ok = got_size >= size if row.output_in == "jsonl" and got is None else got_size == size
        if not size_ok:
            raise RunFailed(f"{row.label}: {got_size} bytes of output for {size}")
        if check and got != expected_output(size):
            raise RunFailed(f"{row.label}: the output is not the job's ({len(got or b'')} bytes)")
        return measured
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``100K`` (powers of 1024, as ``head -c``) or bytes."""
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in UNITS else (text, "")
    try:
        value = int(number) * UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("the flood must be at least 1 byte")
    return value


def megabytes(kib: int) -> float:
    return kib * 1024 / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flood-bytes", type=parse_size, help="what the job prints (default 2G; 256M with --quick)")
    parser.add_argument("--quick", action="store_true", help="256 MiB per row: a smoke test")
    args = parser.parse_args(argv)
    size = args.flood_bytes or (QUICK_FLOOD_BYTES if args.quick else FLOOD_BYTES)

    directory = Path(tempfile.mkdtemp(prefix="map-flood-"))
    ENV.update({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    ENV["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
    measured: dict[str, Measured] = {}
    try:
        run_measured([*PHALANX, "map", "true", ":::", "1"], directory)  # warms the .pyc files
        for row in ROWS:
            run_row(row, CHECK_BYTES, directory, check=True)
            print(f"check {row.label:18}: {CHECK_BYTES} bytes, the job's output exactly", file=sys.stderr)
        baseline = run_measured([*PHALANX, "map", "true", ":::", "1"], directory)
        for row in ROWS:
            measured[row.label] = run_row(row, size, directory, check=False)
            print(f"{row.label:18} {measured[row.label].wall:.2f}s", file=sys.stderr)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    rows = [
        [
            "phalanx map true ::: 1 (no output)",
            "-",
            "-",
            f"{megabytes(baseline.maxrss_kib):.1f}",
            f"{megabytes(baseline.vm_hwm_kib):.1f}",
        ]
    ]
    for label, run in measured.items():
        rate = f"{size / run.wall / 1e6:.0f}"
        rows.append(
            [label, f"{run.wall:.2f}", rate, f"{megabytes(run.maxrss_kib):.1f}", f"{megabytes(run.vm_hwm_kib):.1f}"]
        )
    print(
        f"One job printing {size} bytes ({size / 1024**3:g} GiB) through `phalanx map -j 1`, stdout a drained pipe; "
        f"RSS in MB (10^6 bytes). wait4 = the peak of phalanx and every process it reaped; VmHWM = phalanx's "
        f"process alone, sampled every {SAMPLE_SECONDS * 1000:.0f} ms; this benchmark's own peak RSS "
        f"{megabytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss):.1f} MB."
    )
    print(table(["row", "wall s", "MB/s", "peak RSS (wait4)", "VmHWM"], rows))
    worst = max(measured, key=lambda label: measured[label].maxrss_kib)
    peak = megabytes(measured[worst].maxrss_kib)
    print(
        f"\ntarget phalanx's peak RSS < {TARGET_MB:g} MB while one job prints {size} bytes: "
        f"{'PASS' if peak < TARGET_MB else 'MISS'} (worst {peak:.1f} MB, {worst})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
