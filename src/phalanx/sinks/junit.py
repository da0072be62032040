"""JUnit XML for a run (``phalanx run --junit FILE``): what CI systems show as test results.

One ``<testsuites>`` holding one ``<testsuite>``, one ``<testcase>`` per task:

- failed, timed out or crashed: ``<failure message=REASON type=STATUS-OR-EXCEPTION>``, its
  body the traceback, if the task raised;
- skipped (a dependency failed) and cancelled: ``<skipped message=...>``;
- retried: the failed attempts as cargo-nextest (and Maven Surefire) write them, one element
  per failed attempt: ``<flakyFailure>`` inside a testcase that passed in the end (it counts
  as passed: CI shows it as flaky), ``<rerunFailure>`` beside the ``<failure>`` of one that
  never did. Each holds that attempt's reason and, for commands, that attempt's output;
- ``<system-out>`` / ``<system-err>``: the end of the task's output (the last `TAIL` bytes
  of each stream), made XML-safe (characters XML 1.0 forbids, such as NUL or a lone
  surrogate, are dropped: a file holding them is not XML, and viewers refuse all of it);
- ``<properties>``: status, attempts, worker, exit code and signal when there are any, and
  ``worker_address`` for a task that ran on a cluster worker (``--backend dask``). Per test
  case, not the suite's ``hostname``: a cluster run's tasks run on many hosts, and the
  attribute names one.

Tasks that write JUnit themselves (a test runner's ``--junitxml``): the caller's
``junit_files(task_id)`` names those files; after the task ends they are read and their
test cases join the report in the same ``<testsuite>``, right after the task's own case,
with ``classname="TASK_ID.<their classname>"``. One flat suite rather than a child
``<testsuite>`` per task because that is what every reader understands: nested suites are
not in the Ant/Surefire schema, and older junitparser releases and several CI viewers read
only the test cases directly inside a ``<testsuite>``; Jenkins and most viewers group test
cases by dotted classname anyway, so the task id shows as a package holding its tests.
A file that is missing, stale (older than the task), not a regular file or not well-formed
XML is never a crash: the task's case gets a ``junit_error`` property and a line in its
``<system-err>``, and none of that file's cases (a truncated file is dropped whole, not
merged in part). `failing_tests` reads the names of failing test cases from such files, for
the console summary: read from the file the test runner wrote, never scraped from its text.

Memory does not grow with the run: each test case is serialised the moment its task ends
into a private temporary file next to the report (``tempfile.TemporaryFile``: no name, gone
when closed), and only the counts the ``<testsuite>`` element needs are kept. At the end
(`RunFinished`, or ``close`` if the run ended without one) the report is written to a
temporary name in its directory and renamed over ``FILE`` (`whole_file`; a device such as
/dev/stdout is written into): a reader sees the old report or the new one, never half of
one. Outputs are read a bounded tail at a time, never whole.

The ``phalanx pytest`` front end (its own issue) writes its report with this module's
`JUnitWriter` too, so both reports look the same to CI; `write_junit` builds the same XML
from a finished `RunReport` (for ``phalanx report``).

Security: the files tasks wrote are parsed with the standard library's expat (2.4.1 and
later refuse entity-expansion bombs, and ElementTree never fetches external entities), and
only regular files are opened (a FIFO would block the run).
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
import stat
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from ..events import Event, RunFinished, RunStarted, TaskFinished, TaskRetrying, TaskStarted
from ..outputfiles import output_paths
from ..results import RunReport, Status, TaskResult
from .joblog import read_chunks, write_all
from .wholefile import whole_file

#: The most of each stream's output (stdout, stderr) kept per attempt, in bytes: its end.
TAIL = 64 * 1024

#: Write errors (a full disk, a quota, a file-size limit): never a task's file's fault.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

#: The longest ``message`` attribute: a one-line summary, the details go in the body.
_MESSAGE_LIMIT = 1024

#: ``junit_files(task_id)``: the JUnit files (paths or glob patterns) a task writes itself.
#: They are read on the scheduler's loop as the task ends: test runners' reports, not gigabytes.
JunitFiles = Callable[[str], Sequence[str]]

_FAILED = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CRASHED})

# Everything but what XML 1.0 allows (tab, newline, carriage return, U+0020-U+D7FF,
# U+E000-U+FFFD, U+10000-U+10FFFF): NUL and other controls, lone surrogates, U+FFFE/U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# An exception's description as `ErrorInfo` writes it: "ValueError: bad" or "pkg.Error".
_EXCEPTION = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


@dataclass(frozen=True, slots=True)
class TestCaseRecord:
    """One test's verdict, for a report of tests rather than tasks (``phalanx pytest``).

    ``outcome``: passed, failed (the test itself), error (its setup or teardown), skipped.
    ``details``: the failure's long text (a traceback); ``message`` its one-line summary.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    classname: str
    name: str
    seconds: float
    outcome: str
    message: str = ""
    details: str = ""
    stdout: str = ""
    stderr: str = ""
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """An attempt that failed and was retried: what `TaskRetrying` said about it."""

    attempt: int
    reason: str
    time: float | None = None  # how long it ran, in seconds, when its start was seen


@dataclass(slots=True)
class _Counts:
    """What the ``<testsuite>`` element's attributes add up."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0

    def add(self, other: _Counts) -> None:
        self.tests += other.tests
        self.failures += other.failures
        self.errors += other.errors
        self.skipped += other.skipped


class JUnitWriter:
    """Builds one JUnit report a test case at a time, holding only counts in memory.

    ``add`` serialises a task's test case (and the test cases of the JUnit files it wrote)
    into a private temporary file in ``scratch_dir``; ``write`` puts the suite around them
    and renames the result over its path. Shared by `JUnitSink`, `write_junit` and the
    ``phalanx pytest`` front end.

    ``started_at`` (Unix time, the run's start) dates the suite and tells files written by
    this run from ones left by an earlier one; it may be set once known.
    """

    def __init__(
        self,
        scratch_dir: str,
        *,
        suite_name: str = "phalanx",
        junit_files: JunitFiles | None = None,
        started_at: float | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.suite_name = suite_name
        self.started_at = started_at
        self._junit_files = junit_files
        self._redact = redact  # masks secrets in the test cases of the tasks' own files (`phalanx.redact`)
        self._counts = _Counts()
        # Next to the report: the same file system (its space, not /tmp's), and the
        # report's own directory is the one place we know we may write.
        self._cases: BinaryIO = tempfile.TemporaryFile(dir=scratch_dir)  # noqa: SIM115 - closed by close()
        # A task's merged test cases are staged here first, so a file that turns out to be
        # malformed half-way can be dropped whole, and so the task's own case (which says
        # what went wrong) is written before them.
        self._nested: BinaryIO | None = None
        self._scratch_dir = scratch_dir

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """(tests, failures, errors, skipped) so far."""
        return self._counts.tests, self._counts.failures, self._counts.errors, self._counts.skipped

    def add(self, result: TaskResult, failed_attempts: Sequence[FailedAttempt] = ()) -> None:
        """Add the test case of a task that ended, and those of the JUnit files it wrote."""
        notes: list[str] = []
        sources: list[str] = []
        merged = _Counts()
        nested = None
        if self._junit_files is not None and result.attempts:  # a task that never ran wrote nothing
            nested = self._merge_junit_files(result, sources, notes, merged)
        case = _task_case(result, self.suite_name, _all_attempts(result, failed_attempts), sources, notes)
        ET.indent(case, space="  ", level=2)
        self._cases.seek(0, os.SEEK_END)
        self._cases.write(b"    " + ET.tostring(case, encoding="utf-8", xml_declaration=False) + b"\n")
        if nested is not None:
            nested.seek(0)
            for chunk in read_chunks(nested):
                self._cases.write(chunk)
        self._counts.tests += 1
        if result.status in _FAILED:
            self._counts.failures += 1
        elif result.status in (Status.SKIPPED, Status.CANCELLED):
            self._counts.skipped += 1
        self._counts.add(merged)

    def add_test(self, test: TestCaseRecord) -> None:
        """Add one test's case (a test runner's own report, as pytest's ``--junitxml`` writes it)."""
        case = ET.Element(
            "testcase", classname=_xml_safe(test.classname), name=_xml_safe(test.name), time=_seconds(test.seconds)
        )
        if test.file is not None:
            case.set("file", _xml_safe(test.file))
        if test.line is not None:
            case.set("line", str(test.line))
        if test.outcome in ("failed", "error"):
            tag = "failure" if test.outcome == "failed" else "error"
            element = ET.SubElement(case, tag, message=_message(test.message or test.details or test.outcome))
            element.text = _xml_safe(test.details) or None
        elif test.outcome == "skipped":
            ET.SubElement(case, "skipped", message=_message(test.message or "skipped"))
        _output(case, "system-out", test.stdout[-TAIL:])
        _output(case, "system-err", test.stderr[-TAIL:])
        ET.indent(case, space="  ", level=2)
        self._cases.seek(0, os.SEEK_END)
        self._cases.write(b"    " + ET.tostring(case, encoding="utf-8", xml_declaration=False) + b"\n")
        self._counts.tests += 1
        if test.outcome == "failed":
            self._counts.failures += 1
        elif test.outcome == "error":
            self._counts.errors += 1
        elif test.outcome == "skipped":
            self._counts.skipped += 1

    def _merge_junit_files(
        self, result: TaskResult, sources: list[str], notes: list[str], merged: _Counts
    ) -> BinaryIO | None:
        """Stage the test cases of the task's JUnit files (their paths go to ``sources``);
        what cannot be read becomes a note."""
        assert self._junit_files is not None
        try:
            found = self._junit_files(result.task_id)
            # One path given as a bare string is one path, not a sequence of characters.
            named = [found] if isinstance(found, str) else list(found)
        except Exception as error:  # the caller's lookup must not cost the report
            notes.append(f"cannot list its JUnit files: {type(error).__name__}: {error}")
            return None
        if not named:
            return None
        if self._nested is None:
            self._nested = tempfile.TemporaryFile(dir=self._scratch_dir)  # noqa: SIM115 - closed by close()
        staged = self._nested
        staged.seek(0)
        staged.truncate()
        # A file written before the task started is a leftover (an earlier run's, a cache's):
        # merging it would report tests this run never ran. A second of slack for coarse
        # file-system clocks.
        since = None
        if self.started_at is not None and result.start is not None:
            since = self.started_at + result.start - 1.0
        seen: set[str] = set()
        for pattern, paths in _expand(named):
            if not paths:
                notes.append(f"JUnit file {pattern}: no file matches")
            for path in paths:
                if path in seen:  # named twice (a path and a pattern matching it): merged once
                    continue
                seen.add(path)
                mark = staged.tell()
                counts = _Counts()
                try:
                    _merge_file(path, result.task_id, staged, counts, since, self._redact)
                except Exception as error:  # a task's file is input: whatever is wrong with it is a note
                    if isinstance(error, OSError) and error.errno in _NO_ROOM:
                        raise  # our staging file is out of room: the report fails, not the task's file
                    staged.seek(mark)
                    staged.truncate()
                    notes.append(f"JUnit file {path}: {_describe(error)}")
                else:
                    merged.add(counts)
                    sources.append(path)
        return staged

    def write(self, path: str | os.PathLike[str], *, time: float) -> None:
        """Write the report to ``path`` (atomically); ``time``: the run's wall time in seconds."""
        path = os.fspath(path)
        tests, failures, errors, skipped = (str(n) for n in self.counts)
        totals = {"tests": tests, "failures": failures, "errors": errors, "skipped": skipped, "time": _seconds(time)}
        suites = ET.Element("testsuites", {"name": _xml_safe(self.suite_name), **totals})
        suite = ET.SubElement(suites, "testsuite", {"name": _xml_safe(self.suite_name), **totals})
        if self.started_at is not None:
            suite.set("timestamp", datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds"))
        # ElementTree writes the suites' tags (and escapes their attributes); the test cases,
        # already serialised, go in the middle, where the marker is.
        marker = f"@phalanx-testcases-{secrets.token_hex(8)}@"
        suite.text = marker
        ET.indent(suites, space="  ")
        head, _, tail = ET.tostring(suites, encoding="unicode").partition(marker)
        with whole_file(path) as fd:
            write_all(fd, f'<?xml version="1.0" encoding="UTF-8"?>\n{head}\n'.encode())
            self._cases.seek(0)
            for chunk in read_chunks(self._cases):
                write_all(fd, chunk)
            write_all(fd, f"  {tail}\n".encode())

    def close(self) -> None:
        self._cases.close()
        if self._nested is not None:
            self._nested.close()


class JUnitSink:
    """Writes a run's JUnit report to ``path`` when the run ends (see the module's notes).

    ``junit_files(task_id)`` names the JUnit files a task writes itself (paths or glob
    patterns, relative to the current directory); they are read when the task ends. One
    sink serves one run.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        suite_name: str = "phalanx",
        junit_files: JunitFiles | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        """``redact`` masks secrets in the test cases merged from the tasks' own JUnit files
        (the events a `phalanx.redact.RedactingSink` hands on are masked already)."""
        self._path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, exist_ok=True)  # as pytest's --junitxml: reports/junit.xml just works
        # Opened now, so a report that cannot be written fails the run before it starts.
        self._writer = JUnitWriter(directory, suite_name=suite_name, junit_files=junit_files, redact=redact)
        self._started: dict[str, float] = {}  # task -> when its current attempt started
        self._failed: dict[str, list[FailedAttempt]] = {}  # task -> its retried attempts so far
        self._last_at = 0.0
        self._seen = False
        self._written = False
        self._closed = False

    def handle(self, event: Event) -> None:
        self._last_at = max(self._last_at, event.at)
        if isinstance(event, RunStarted):
            self._seen = True
            self._writer.started_at = event.started_at
        elif isinstance(event, TaskStarted):
            self._started[event.task_id] = event.at
        elif isinstance(event, TaskRetrying):
            started = self._started.pop(event.task_id, None)
            ran = None if started is None else event.at - started
            self._failed.setdefault(event.task_id, []).append(FailedAttempt(event.attempt, event.reason, ran))
        elif isinstance(event, TaskFinished):
            self._seen = True
            self._started.pop(event.task_id, None)
            try:
                self._writer.add(event.result, self._failed.pop(event.task_id, ()))
            except OSError as error:  # the staged test cases hit a full disk or a file-size limit
                raise OSError(error.errno, error.strerror, self._path) from error
        elif isinstance(event, RunFinished):
            self._seen = True
            if self._writer.started_at is None:
                self._writer.started_at = event.report.summary.started_at
            self._write(event.report.summary.wall_time)

    def _write(self, time: float) -> None:
        if self._written:
            return
        self._written = True  # once, even if it fails: close must not fail the same way again
        self._writer.write(self._path, time=time)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # A run that ended without RunFinished (an error in the engine) still leaves a
            # report of what did end; one refused before anything ran leaves none.
            if self._seen:
                self._write(self._last_at)
        finally:
            self._writer.close()


def write_junit(
    report: RunReport,
    path: str | os.PathLike[str],
    *,
    suite_name: str = "phalanx",
    junit_files: JunitFiles | None = None,
    retries: Mapping[str, Sequence[FailedAttempt]] | None = None,
) -> None:
    """Write the JUnit report of a finished run, as `JUnitSink` would have.

    A report does not hold why each retried attempt failed: pass ``retries`` (by task id)
    if it was recorded; otherwise each failed attempt is reported without its reason.
    Outputs come from the results' output files where they still exist, else their tails.
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    writer = JUnitWriter(
        directory, suite_name=suite_name, junit_files=junit_files, started_at=report.summary.started_at
    )
    try:
        for result in report.results.values():
            writer.add(result, (retries or {}).get(result.task_id, ()))
        writer.write(path, time=report.summary.wall_time)
    finally:
        writer.close()


def failing_tests(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """The names of the failed or errored test cases in JUnit files, in file order, each once.

    A name is ``classname.name`` (how Jenkins and Surefire name a test), or ``name`` alone
    when there is no classname. Glob patterns are expanded. A file that cannot be read
    gives no names; one that breaks off gives those before the break (they are real).
    """
    named = [os.fspath(paths)] if isinstance(paths, str | os.PathLike) else [os.fspath(p) for p in paths]
    names: dict[str, None] = {}
    for _, files in _expand(named):
        for path in files:
            try:
                with _open_regular(path) as source:
                    for case, _ in _testcases(source):
                        if any(_local(child.tag) in ("failure", "error") for child in case):
                            name, classname = case.get("name", ""), case.get("classname", "")
                            names[f"{classname}.{name}" if classname else name] = None
            except Exception:  # a task's file is input: one that cannot be read names nothing
                continue
    return list(names)


# ----------------------------------------------------------------------------- test cases


def _all_attempts(result: TaskResult, known: Sequence[FailedAttempt]) -> list[FailedAttempt]:
    """Every attempt before the last one failed (a retry follows only a failure): those the
    events told of, and a placeholder for any they did not (a report has no reasons)."""
    by_number = {attempt.attempt: attempt for attempt in known}
    for number in range(1, result.attempts):
        by_number.setdefault(number, FailedAttempt(number, f"attempt {number} failed (its reason was not recorded)"))
    return [by_number[number] for number in sorted(by_number)]


def _task_case(
    result: TaskResult,
    suite_name: str,
    failed: Sequence[FailedAttempt],
    sources: Sequence[str],
    notes: Sequence[str],
) -> ET.Element:
    """The task's own test case: its verdict, its retried attempts, its output, its notes."""
    case = ET.Element(
        "testcase", name=_xml_safe(result.task_id), classname=_xml_safe(suite_name), time=_seconds(result.duration)
    )
    properties = ET.SubElement(case, "properties")
    _property(properties, "status", result.status.value)
    _property(properties, "attempts", result.attempts)
    for name, value in (("worker", result.worker), ("worker_address", result.worker_address),
                        ("exit_code", result.exit_code), ("signal", result.signal), ("blocked_by", result.blocked_by)):
        if value is not None:
            _property(properties, name, value)
    for source in sources:
        _property(properties, "junit_file", source)  # where the test cases after this one come from
    for note in notes:
        _property(properties, "junit_error", note)
    if result.note is not None:  # output cut by max_output
        _property(properties, "note", result.note)

    reason = result.reason or result.status.value
    if result.status in _FAILED:
        kind = result.error.type if result.error is not None else result.status.value
        failure = ET.SubElement(case, "failure", message=_message(reason), type=_xml_safe(kind))
        body = result.error.traceback if result.error is not None and result.error.traceback else ""
        failure.text = _xml_safe(body or (reason if "\n" in reason.strip() else "")) or None
    elif result.status is Status.SKIPPED:
        ET.SubElement(case, "skipped", message=_message(reason))
    elif result.status is Status.CANCELLED:
        ET.SubElement(case, "skipped", message=_message(reason if "cancel" in reason else f"cancelled: {reason}"))

    # nextest's names: a test that passed in the end was flaky; one that did not was rerun.
    rerun_tag = "flakyFailure" if result.ok else "rerunFailure"
    attempt_files = _attempt_files(result)
    for attempt in failed:
        rerun = ET.SubElement(case, rerun_tag, message=_message(attempt.reason), type=_attempt_type(attempt.reason))
        if attempt.time is not None:
            rerun.set("time", _seconds(attempt.time))
        if "\n" in attempt.reason.strip():
            ET.SubElement(rerun, "stackTrace").text = _xml_safe(attempt.reason)
        if attempt_files is not None:
            stdout, stderr = attempt_files(attempt.attempt)
            _output(rerun, "system-out", _read_tail(stdout, ""))
            _output(rerun, "system-err", _read_tail(stderr, ""))

    _output(case, "system-out", _read_tail(result.stdout_path, result.stdout_tail))
    stderr = _read_tail(result.stderr_path, result.stderr_tail)
    if result.note is not None:
        notes = [*notes, result.note]
    if notes:
        lines = "".join(f"phalanx: {note}\n" for note in notes)
        stderr = f"{stderr}\n{lines}" if stderr and not stderr.endswith("\n") else stderr + lines
    _output(case, "system-err", stderr)
    return case


def _attempt_files(result: TaskResult) -> Callable[[int], tuple[str, str]] | None:
    """Where the task's earlier attempts wrote their output: beside the last attempt's files,
    named as `output_paths` names them (checked against the last attempt's own names, so a
    result whose files live elsewhere gets None rather than a wrong guess)."""
    if result.stdout_path is None or result.attempts < 2:
        return None
    run_dir = os.path.dirname(result.stdout_path)
    if output_paths(run_dir, result.task_id, result.attempts) != (result.stdout_path, result.stderr_path):
        return None
    return lambda number: output_paths(run_dir, result.task_id, number)


def _attempt_type(reason: str) -> str:
    """The ``type`` of a retried attempt, from its reason's wording (all `TaskRetrying` says):
    a timeout, the exception a callable raised, else a plain failure."""
    if reason.startswith("timed out"):
        return Status.TIMED_OUT.value
    match = _EXCEPTION.match(reason)
    if match is not None and match.group(1)[:1].isupper():
        return match.group(1)
    return Status.FAILED.value


def _property(properties: ET.Element, name: str, value: object) -> None:
    ET.SubElement(properties, "property", name=name, value=_xml_safe(str(value)))


def _output(parent: ET.Element, tag: str, text: str) -> None:
    if text:
        ET.SubElement(parent, tag).text = _xml_safe(text)


def _read_tail(path: str | None, fallback: str) -> str:
    """The last `TAIL` bytes of an output file, decoded; ``fallback`` if there is no file.

    Never more than `TAIL` bytes are read, however much the task printed; what is cut off
    is said, so nobody takes the tail for the whole.
    """
    if path is None:
        return fallback
    try:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            start = max(0, size - TAIL)
            source.seek(start)
            data = source.read(TAIL)
    except OSError:
        return fallback
    if not start:
        return data.decode("utf-8", "replace")
    skip = 0  # cut inside a character: drop its stray continuation bytes rather than show U+FFFD
    while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
        skip += 1
    return f"[phalanx: the first {start + skip} bytes are not shown]\n" + data[skip:].decode("utf-8", "replace")


def _message(text: str) -> str:
    """A one-line ``message`` attribute: the first line that says something, kept short."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(line) > _MESSAGE_LIMIT:
        line = line[: _MESSAGE_LIMIT - 1] + "…"
    return _xml_safe(line)


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("", text)


def _seconds(value: float) -> str:
    return f"{max(0.0, value):.3f}"


# ----------------------------------------------------------------------- JUnit files read


class _Unusable(Exception):
    """A JUnit file that is not one to merge: not a regular file, stale, or without test cases."""


def _expand(named: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """Each named path or glob pattern, with the files it stands for."""
    for entry in named:
        entry = os.fspath(entry)
        if glob.has_magic(entry):
            yield entry, sorted(glob.glob(entry, recursive=True))
        else:
            yield entry, [entry]


def _open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file: a FIFO or a device would block
    or never end (opened non-blocking, so a FIFO cannot block even the open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unusable("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _merge_file(path: str, task_id: str, into: BinaryIO, counts: _Counts, since: float | None,
                redact: Callable[[str], str] | None = None) -> None:
    """Write the test cases of the JUnit file at ``path`` to ``into``, under ``task_id``
    (every text and attribute passed through ``redact``, if given)."""
    with _open_regular(path) as source:
        if since is not None and os.fstat(source.fileno()).st_mtime < since:
            raise _Unusable("older than the task: left by an earlier run, not written by this one")
        for case, suite in _testcases(source):
            _rehome(case, task_id, suite)
            if redact is not None:
                _mask(case, redact)
            counts.tests += 1
            kinds = {_local(child.tag) for child in case}
            if "error" in kinds:
                counts.errors += 1
            elif "failure" in kinds:
                counts.failures += 1
            elif "skipped" in kinds:
                counts.skipped += 1
            ET.indent(case, space="  ", level=2)
            into.write(b"    " + ET.tostring(case, encoding="utf-8", xml_declaration=False) + b"\n")
    if not counts.tests:
        raise _Unusable("no test cases in it")


def _testcases(source: BinaryIO) -> Iterator[tuple[ET.Element, str]]:
    """Each ``<testcase>`` of a JUnit file (at any depth, under any root), with the name of
    the ``<testsuite>`` around it, as it is parsed: each is dropped from the tree once
    yielded, so a file with many test cases costs the memory of one."""
    path: list[ET.Element] = []
    suites: list[str] = []
    for event, element in ET.iterparse(source, events=("start", "end")):
        tag = _local(element.tag)
        if event == "start":
            path.append(element)
            if tag == "testsuite":
                suites.append(element.get("name", ""))
            continue
        path.pop()
        if tag == "testcase":
            yield element, suites[-1] if suites else ""
        elif tag == "testsuite":
            suites.pop()
        else:
            continue
        element.clear()
        if path:
            path[-1].remove(element)


def _rehome(case: ET.Element, task_id: str, suite: str) -> None:
    """Make a test case from a task's file one of the report's: its classname under the task
    id (the suite's name when it has none: pytest's suite name is all some runners give),
    no namespaces, texts cut to their last `TAIL` characters."""
    case.tail = None  # tostring writes an element's tail: the whitespace after it in its file
    classname = case.get("classname") or suite
    case.set("classname", _xml_safe(f"{task_id}.{classname}" if classname else task_id))
    case.set("name", case.get("name") or "(unnamed)")
    for element in case.iter():
        element.tag = _local(element.tag)
        for key in [key for key in element.attrib if key.startswith("{")]:
            element.set(_local(key), element.attrib.pop(key))
        if element.text is not None and len(element.text) > TAIL:
            cut = len(element.text) - TAIL
            element.text = f"[phalanx: the first {cut} characters are not shown]\n" + element.text[cut:]


def _mask(case: ET.Element, redact: Callable[[str], str]) -> None:
    """Every text and attribute value of ``case`` passed through ``redact``."""
    for element in case.iter():
        if element.text:
            element.text = redact(element.text)
        if element.tail:
            element.tail = redact(element.tail)
        for key, value in list(element.attrib.items()):
            element.set(key, redact(value))


def _local(tag: str) -> str:
    """A tag or attribute without its namespace: ``{urn:x}testcase`` is a testcase."""
    return tag.rpartition("}")[2]


def _describe(error: BaseException) -> str:
    if isinstance(error, _Unusable):
        return str(error)
    if isinstance(error, ET.ParseError):
        return f"not well-formed JUnit XML ({error})"
    if isinstance(error, FileNotFoundError):
        return "missing (the task did not write it)"
    if isinstance(error, OSError):
        return f"cannot be read ({error.strerror or error})"
    if isinstance(error, RecursionError):
        return "nested too deeply to read"
    return f"cannot be read ({type(error).__name__}: {error})"


