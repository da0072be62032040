"""The security guarantees, each proved by a test that fails if it breaks.

1. Nothing in a value ever runs: a hostile argument of ``phalanx map`` (``{}``) or item of
   ``phalanx run`` (``{item}``), bare, in ``'...'`` or in ``"..."``, reaches the command as
   data (``printf %s`` prints it exactly) and no canary file appears. Property tests over
   one strategy shared by both front ends (tests/hostile.py), and one real run of each.
2. Paths built from arguments never leave their folder: ``phalanx map --results DIR``
   (``..``, absolute paths, weird bytes, very long names), the output files of a run
   (``--log-dir``), and a task's ``junit = "reports/{item}.xml"`` (an item can steer the
   path phalanx *reads* a task's JUnit file from, never one it writes). Each walks the
   temporary root afterwards.
3. The HTML report shows every string as text: hostile task ids, reasons, output,
   tracebacks, data and titles never become an element or an attribute; its two scripts
   are its own, the executable one carrying the page's CSP nonce.
4. ``redact``: the values of the named variables appear in none of the files phalanx writes
   (journal bytes, JUnit, HTML, trace, results, ``--json``, console, ``phalanx show``), while
   the task gets the real value and its own files (``--log-dir``) keep what it printed.
5. Permissions: with a umask of 0, ``.phalanx/`` is 0700 and the journal 0600, run
   directories 0700 and output files 0600; reports follow the umask, as does map's
   ``--results DIR`` (GNU parallel's behaviour).
"""

from __future__ import annotations

import html.parser
import io
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from hostile import CANARY, CONTEXTS, SAMPLES, hostile_values, run_command, template, toml_string
from mapsupport import environment, run_map
from phalanx.config import load_task_file
from phalanx.errors import ConfigError
from phalanx.events import TaskFinished
from phalanx.gnu.template import Template
from phalanx.outputfiles import output_paths
from phalanx.redact import MASK, MIN_LENGTH, Redaction, Redactor
from phalanx.results import Status, TaskResult
from phalanx.sinks.html import AttemptSpan, Output, ReportData, TaskEntry, render_report
from phalanx.sinks.results import DirectoryResults, JobInfo

PHALANX = (sys.executable, "-m", "phalanx")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def phalanx(*args: str, cwd: Path, env: dict[str, str] | None = None,
            umask: int = -1) -> subprocess.CompletedProcess[str]:
    """A real ``phalanx ARGS`` in ``cwd``, to its end (``umask``: the child's, if given)."""
    return subprocess.run([*PHALANX, *args], cwd=cwd, env=environment(cwd, env), capture_output=True, text=True,
                          timeout=60, check=False, umask=umask)


def tree(root: Path) -> set[Path]:
    """Every path under ``root`` (links not followed)."""
    found: set[Path] = set()
    for folder, folders, files in os.walk(root):
        found.update(Path(folder, name) for name in [*folders, *files])
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ------------------------------------------------------------- 1. substituted values never run


@SETTINGS
@given(value=hostile_values)
@example(value="'\\''$(touch PWNED)")
@example(value="\\\n$(touch PWNED)")
def test_a_map_argument_reaches_the_command_as_data_in_every_context(value: str, tmp_path: Path) -> None:
    for context in CONTEXTS:
        command = Template.parse(template(context, "{}"), append_args=True).render([value], seq=1)
        done = run_command(command, tmp_path)
        assert not (tmp_path / CANARY).exists(), (context, command)
        assert (done.returncode, done.stdout) == (0, value.encode()), (context, command, done.stderr)


@SETTINGS
@given(value=hostile_values)
@example(value="'; touch PWNED; '")
@example(value='"; touch PWNED; "')
def test_a_run_item_reaches_the_command_as_data_in_every_context(value: str, tmp_path: Path) -> None:
    lines = []
    for context in CONTEXTS:
        lines += [f"[tasks.{context}]", f"cmd = {toml_string(template(context, '{item}'))}",
                  f"for_each = [{toml_string(value)}]"]
    path = tmp_path / "phalanx.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tasks = list(load_task_file(path).graph)
    assert len(tasks) == len(CONTEXTS)
    for task in tasks:
        assert isinstance(task.action, str)
        done = run_command(task.action, tmp_path)
        assert not (tmp_path / CANARY).exists(), task.action
        assert (done.returncode, done.stdout) == (0, value.encode()), (task.action, done.stderr)


# \037 (unit separator) ends each printed value: none of the samples holds one.
_EACH = "printf '%s\\037' {0} '{0}' \"{0}\""


def test_phalanx_map_runs_hostile_arguments_as_data(tmp_path: Path) -> None:
    result = run_map(["-k", "--no-journal", _EACH.format("{}"), ":::", *SAMPLES], cwd=tmp_path)
    assert not (tmp_path / CANARY).exists()
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"".join((value + "\x1f").encode() * 3 for value in SAMPLES)


def test_phalanx_run_runs_hostile_items_as_data(tmp_path: Path) -> None:
    items = ", ".join(map(toml_string, SAMPLES))
    (tmp_path / "phalanx.toml").write_text(f"[tasks.t]\ncmd = {toml_string(_EACH.format('{item}'))}\n"
                                           f"for_each = [{items}]\n", encoding="utf-8")
    done = phalanx("run", "--json", "-j4", cwd=tmp_path)
    assert not (tmp_path / CANARY).exists()
    assert done.returncode == 0, done.stderr
    tails = {result["task_id"]: result["stdout_tail"] for result in json.loads(done.stdout)["results"]}
    assert tails == {f"t[{value}]": (value + "\x1f") * 3 for value in SAMPLES}


# --------------------------------------------------- 2. paths from arguments stay in their folder

_ESCAPES = ["..", ".", "../../escaped", "/", "/tmp/escaped", "a/../../escaped", "./..", "\\", "\\_", "\\.\\.",
            "x" * 300, "ü" * 150, "\udcff\udcfe..", "a\tb", "a\nb", "~", "-", "", ".hidden", "/.."]
_WEIRD_BYTES = st.lists(st.sampled_from([chr(0xDC80 + n) for n in range(128)]), max_size=3).map("".join)
path_values = st.one_of(
    st.sampled_from(_ESCAPES),
    st.text(alphabet="./\\~a\t", max_size=12),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=300),
    st.tuples(st.sampled_from(_ESCAPES), _WEIRD_BYTES, st.sampled_from(_ESCAPES)).map("".join),
)


@settings(max_examples=40, deadline=None)
@given(args=st.lists(path_values, min_size=1, max_size=3), name=st.one_of(st.none(), path_values))
@example(args=["../../escaped", "/tmp/escaped"], name="..")
def test_results_folders_built_from_arguments_stay_inside_the_results_folder(args: list[str], name: str | None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        root = base / "a" / "b" / "results"  # deep enough for ../.. to land somewhere visible
        output = base / "job.out"
        output.write_bytes(b"out\n")
        names = None if name is None else (name, *(f"c{n}" for n in range(1, len(args))))
        sink = DirectoryResults(root, lambda result: JobInfo(7, tuple(args), "cmd", names))
        try:
            result = TaskResult("7", Status.SUCCEEDED, attempts=1, exit_code=0, stdout_path=str(output))
            sink.handle(TaskFinished(result, at=0.0))
        finally:
            sink.close()
        made = tree(base) - {output, base / "a", base / "a" / "b"}
        outside = {path for path in made if root != path and root not in path.parents}
        assert not outside
        assert len([path for path in made if path.name == "seq"]) == 1  # the job's record is there


@settings(max_examples=100, deadline=None)
@given(task_id=st.one_of(path_values, st.text(min_size=1)), number=st.integers(1, 1000))
def test_output_files_of_any_task_id_stay_in_the_run_directory(task_id: str, number: int) -> None:
    for path in output_paths("/run/dir", task_id or "x", number):
        assert os.path.dirname(path) == "/run/dir"
        name = os.path.basename(path)
        assert not name.startswith(".") and "/" not in name and len(os.fsencode(name)) <= 255


def test_phalanx_map_results_from_hostile_arguments_stay_in_the_folder(tmp_path: Path) -> None:
    work = tmp_path / "sandbox" / "work"
    work.mkdir(parents=True)
    values = ["../../escaped", "/tmp/escaped-by-map", "..", ".", "x" * 400, "a/../../escaped"]
    result = run_map(["--no-journal", "--results", "out", "echo", ":::", *values], cwd=work)
    assert result.returncode == 0, result.stderr
    made = tree(tmp_path) - {tmp_path / "sandbox", work, work / ".parallel"}
    assert made and all(work / "out" in path.parents or path == work / "out" for path in made), made
    assert len([path for path in made if path.name == "stdout"]) == len(values)
    assert not Path("/tmp/escaped-by-map").exists()


def test_phalanx_run_files_from_hostile_items_stay_in_their_folders(tmp_path: Path) -> None:
    work = tmp_path / "sandbox" / "work"
    work.mkdir(parents=True)
    items = ["../../escaped", "/tmp/escaped-by-run", "..", "x" * 400]
    (work / "phalanx.toml").write_text(
        f'[tasks.t]\ncmd = "true"\njunit = "reports/{{item}}.xml"\nfor_each = [{", ".join(map(toml_string, items))}]\n',
        encoding="utf-8")
    before = tree(tmp_path)
    done = phalanx("run", "--log-dir", "logs", "--junit", "junit.xml", cwd=work)
    assert done.returncode == 0, done.stderr
    made = tree(tmp_path) - before
    allowed = (work / "logs", work / ".phalanx")
    strays = {path for path in made if path != work / "junit.xml"
              and not any(path == folder or folder in path.parents for folder in allowed)}
    assert not strays
    assert len(list((work / "logs").glob("*.out"))) == len(items)
    # Each item steered where phalanx looked for its task's own JUnit file (a path the task
    # file's author chose, as the cmd); phalanx only reads there, and wrote nothing.
    assert '<testsuites name="phalanx" tests="4"' in (work / "junit.xml").read_text(encoding="utf-8")
    assert not Path("/tmp/escaped-by-run").exists()


# ----------------------------------------------------------------- 3. the HTML report escapes


_MARKUP = ["</script><script>x_pwned=1</script>", '"><x-pwned x-pwned="1">', "'><x-pwned x-pwned='1'>",
           "<x-pwned/>", "]]>", "<!--", "-->", "</title><x-pwned>", "</style><x-pwned>", "</pre><x-pwned>",
           "<![CDATA[", "\u2028\u2029", "&amp;", "&lt;x-pwned&gt;", "javascript:", "\x1b[31m", "\r\n", "é"]
html_texts = st.lists(st.one_of(st.sampled_from(_MARKUP), st.text(max_size=4)), min_size=1, max_size=5).map("".join)


class _Page(html.parser.HTMLParser):
    """The elements of a page as a browser's tokenizer sees them: tags, attributes, script bodies."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def _hostile_report(text: str) -> ReportData:
    entry = TaskEntry(text, "failed", reason=text, attempts=2, start=0.0, duration=1.0, slot=1, exit_code=1,
                      stdout=Output(text), stderr=Output(text, None), traceback=text, data={text: text, "n": [text]})
    return ReportData(
        title=text, run_id=text, started_at=0.0, complete=True, total=2, counts={"failed": 1, "succeeded": 1},
        flaky=0, wall_time=2.0, busy_time=2.0, max_workers=2, achieved_parallelism=1.0, max_concurrency=1,
        lower_bound=1.0, critical_path=(text, "b"), critical_path_time=2.0,
        attempts=(AttemptSpan(text, 1, 1, 0.0, 0.5, "retried", reason=text),
                  AttemptSpan(text, 2, 1, 0.5, 1.0, "failed", reason=text),
                  AttemptSpan("b", 1, 2, 0.0, 1.0, "succeeded")),
        tasks=(entry, TaskEntry("b", "succeeded", attempts=1, start=0.0, duration=1.0, slot=2)),
        data_totals={text: 1.0}, cancelled_by=text, halted_by=text,
    )


@settings(max_examples=50, deadline=None)
@given(text=html_texts)
def test_every_string_the_html_report_shows_is_text(text: str) -> None:
    page = render_report(_hostile_report(text))
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    assert not any(tag == "x-pwned" or "x-pwned" in attrs for tag, attrs in parsed.tags)
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert len(scripts) == 2 and scripts[0].get("type") == "application/json"
    policy = next(attrs["content"] for tag, attrs in parsed.tags
                  if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy")
    assert policy is not None
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy)
    assert nonce and scripts[1].get("nonce") == nonce.group(1)
    assert "x_pwned" not in parsed.scripts[1]  # the executable script is the page's own
    data = json.loads(parsed.scripts[0])  # the data block holds the text as data, whole
    assert data["title"] == text and text in data["critical_path"]


def test_each_page_gets_a_fresh_nonce() -> None:
    data = _hostile_report("x")
    nonces = {re.findall(r'<script nonce="([^"]+)">', render_report(data))[0] for _ in range(3)}
    assert len(nonces) == 3


# ---------------------------------------------------------------------------------- 4. redact

SECRET = "s3cr3t-Token/with+chars"
TABLE_SECRET = "from-the-env-table"


def test_the_redactor_masks_values_longest_first_and_explains_short_ones() -> None:
    environment = {"API_TOKEN": SECRET, "DB_SECRET": " padded-value\n", "X_SECRET": "abc", "Y_SECRET": "",
                   "api_token": "lower-case-name", "OTHER": "not-named"}
    redactor, warnings = Redactor.from_environment(["API_TOKEN", "*_SECRET"], [environment, {"B_SECRET": SECRET[:8]}])
    assert warnings == [f"redact: the value of X_SECRET is shorter than {MIN_LENGTH} characters: it is not masked"]
    assert redactor.text(f"a {SECRET} b {SECRET[:8]} c") == f"a {MASK} b {MASK} c"  # the longer value first
    assert redactor.text("padded-value lower-case-name not-named abc") == f"{MASK} lower-case-name not-named abc"
    # A tail that begins inside a secret: the piece of it there is masked, a shorter one is not.
    assert redactor.tail(SECRET[-6:] + " end") == f"{MASK} end"
    assert redactor.tail(SECRET[-3:] + " end") == SECRET[-3:] + " end"
    assert redactor.data({SECRET: [SECRET, 1, None]}) == {MASK: [MASK, 1, None]}
    assert not Redactor.from_environment(["NONE_SET"], [environment])[0]


@settings(max_examples=100, deadline=None)
@given(secrets=st.lists(st.text(alphabet="ab\n", min_size=MIN_LENGTH, max_size=6), min_size=1, max_size=3),
       text=st.text(alphabet="ab\n*", max_size=60), chunk=st.integers(1, 9))
def test_files_are_masked_exactly_as_text_is_whatever_the_chunks(secrets: list[str], text: str, chunk: int) -> None:
    redactor = Redactor(secrets)
    data = text.encode()
    copy = io.BytesIO()
    redactor.copy_masked(io.BytesIO(data), copy, chunk_size=chunk)
    assert copy.getvalue() == redactor.text(text).encode()
    assert redactor.holds_secret(io.BytesIO(data), chunk_size=chunk) == (redactor.text(text) != text)


def test_output_files_holding_a_secret_are_read_through_masked_copies(tmp_path: Path) -> None:
    redaction = Redaction(Redactor([SECRET]))
    run_dir = str(tmp_path)
    for task_id, first, second in (("leaky", f"1 {SECRET}\n", "2 clean\n"), ("clean", "1\n", "2\n")):
        for number, text in ((1, first), (2, second)):
            for path in output_paths(run_dir, task_id, number):
                Path(path).write_text(text, encoding="utf-8")
    results = {tid: TaskResult(tid, Status.FAILED, attempts=2, stdout_tail="2 clean\n",
                               stdout_path=output_paths(run_dir, tid, 2)[0],
                               stderr_path=output_paths(run_dir, tid, 2)[1]) for tid in ("leaky", "clean")}
    clean = redaction.result(results["clean"])
    assert (clean.stdout_path, clean.stderr_path) == (results["clean"].stdout_path, results["clean"].stderr_path)
    # The last attempt is clean, an earlier one is not: every attempt is read through a copy,
    # where JUnit looks for the earlier attempts' files (beside the last one's).
    leaky = redaction.result(results["leaky"])
    assert leaky.stdout_path is not None and os.path.dirname(leaky.stdout_path) != run_dir
    copies = os.path.dirname(leaky.stdout_path)
    assert _mode(Path(copies)) == 0o700
    first_out, first_err = output_paths(copies, "leaky", 1)
    assert Path(first_out).read_text() == Path(first_err).read_text() == f"1 {MASK}\n"
    assert Path(leaky.stdout_path).read_text() == "2 clean\n"
    redaction.close()
    assert not os.path.exists(copies)


_LEAKY_TASKS = f"""
redact = ["API_TOKEN"]

[defaults]
redact = ["*_SECRET"]

[tasks.leak]
# Prints both secrets, reports them as data and in its own JUnit file, fails once, then fails for good.
cmd = '''
echo "token=$API_TOKEN table=$TABLE_SECRET"; echo "err $API_TOKEN" >&2
printf '{{"token": "%s"}}' "$API_TOKEN" > "$PHALANX_RESULT_FILE"
printf '<testsuite><testcase name="t_%s" classname="c"><failure message="%s">%s</failure></testcase></testsuite>' \
  "$API_TOKEN" "$TABLE_SECRET" "$API_TOKEN" > own-junit.xml
printf '%s %s' "$API_TOKEN" "$TABLE_SECRET" > seen-by-the-task.txt
exit 3
'''
env = {{ TABLE_SECRET = "{TABLE_SECRET}" }}
retries = 1
junit = "own-junit.xml"

[tasks.after]
cmd = "echo never"
deps = ["leak"]

[tasks.notfound]
# The shell's complaint, with the secret in it, becomes the reason (and a retry's reason).
cmd = 'run-"$API_TOKEN"'
retries = 1
"""


def _files_holding(root: Path, *values: str) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in tree(root) if path.is_file()
                  and any(value.encode() in path.read_bytes() for value in values))


def test_redacted_values_are_in_nothing_phalanx_writes(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text(_LEAKY_TASKS, encoding="utf-8")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    reports = ["--junit", "junit.xml", "--html", "report.html", "--trace", "trace.json", "--results", "rows.jsonl"]
    done = phalanx("run", "--json", "--output", "always", "--log-dir", "logs", *reports, cwd=tmp_path,
                   env={"API_TOKEN": SECRET, "TMPDIR": str(scratch)})
    assert done.returncode == 1, done.stderr
    for text in (done.stdout, done.stderr):  # --json's report, the console with the output of failures
        assert SECRET not in text and TABLE_SECRET not in text
    assert "token=*** table=***" in done.stderr and json.loads(done.stdout)["results"][0]["data"] == {"token": MASK}
    assert "command not found (exit 127): " in done.stdout and f"run-{MASK}" in done.stdout
    for report in ("junit.xml", "report.html", "trace.json", "rows.jsonl"):  # each shows what was masked
        assert f"run-{MASK}" in (tmp_path / report).read_text(encoding="utf-8"), report
    # The task had the real values; what it wrote itself (its files, --log-dir's raw output) is its own.
    assert (tmp_path / "seen-by-the-task.txt").read_text() == f"{SECRET} {TABLE_SECRET}"
    holding = _files_holding(tmp_path, SECRET, TABLE_SECRET)  # the journal's bytes (and its WAL) among them
    assert [path for path in holding if not path.startswith("logs/")] == [
        "own-junit.xml", "phalanx.toml", "seen-by-the-task.txt"]
    raw = {re.sub(r"-[0-9a-f]{8}\.", ".", path) for path in holding if path.startswith("logs/")}
    assert raw == {"logs/leak.1.out", "logs/leak.1.err", "logs/leak.1.result.json", "logs/leak.2.out",
                   "logs/leak.2.err", "logs/leak.2.result.json", "logs/notfound.1.err", "logs/notfound.2.err"}
    assert (tmp_path / ".phalanx" / "journal.db").exists()
    junit = (tmp_path / "junit.xml").read_text(encoding="utf-8")
    assert f"t_{MASK}" in junit and "token=***" in junit  # the task's own cases merged, masked
    assert list(scratch.iterdir()) == []  # no masked copy (nor run directory) left behind
    # phalanx show reads the journal: masked too.
    from click.testing import CliRunner

    from phalanx.cli import main
    from phalanx.journal import Journal

    with Journal.open(tmp_path) as journal:
        run_id = journal.runs()[0].id
    shown = CliRunner().invoke(main, ["show", run_id, "leak", "-f", str(tmp_path / "phalanx.toml")])
    assert shown.exit_code == 0 and "token=*** table=***" in shown.output and SECRET not in shown.output


def test_phalanx_map_masks_what_it_writes_and_passes_the_jobs_output_through(tmp_path: Path) -> None:
    job = 'echo "$API_TOKEN {}"; exit 1'
    env = {"API_TOKEN": SECRET}
    recorded = run_map(["--redact", "API_TOKEN", "--joblog", "jobs.log", "--results", "rows.csv", job, ":::", "a",
                        SECRET], cwd=tmp_path, env=env)
    assert recorded.returncode == 2
    assert SECRET.encode() not in recorded.stdout + recorded.stderr
    assert _files_holding(tmp_path, SECRET) == []  # the joblog, the results, the journal
    assert (tmp_path / ".phalanx" / "journal.db").exists()
    assert f"echo \"$API_TOKEN {MASK}\"" in (tmp_path / "jobs.log").read_text(encoding="utf-8")
    assert f"{MASK} {MASK}" in (tmp_path / "rows.csv").read_text(encoding="utf-8")
    printed = run_map(["--no-journal", "--redact", "API_TOKEN", "-k", job, ":::", "a"], cwd=tmp_path, env=env)
    assert printed.stdout == f"{SECRET} a\n".encode()  # the job's own output, as GNU parallel prints it


@pytest.mark.parametrize(("text", "line", "words"), [
    ('redact = "API_TOKEN"\n', 1, "redact must be a list"),
    ('redact = ["A=B"]\n', 1, "not a variable name"),
    ('[defaults]\nredact = [""]\n', 2, "expected the name of an environment variable"),
    ('[tasks.b]\ncmd = "true"\nredact = ["X"]\n', 3, "unknown key 'redact'"),
])
def test_a_bad_redact_setting_names_its_line(text: str, line: int, words: str, tmp_path: Path) -> None:
    path = tmp_path / "phalanx.toml"
    path.write_text(text + '[tasks.a]\ncmd = "true"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_task_file(path)
    assert raised.value.line == line and words in str(raised.value)


def test_a_bad_redact_option_is_one_line_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from click.testing import CliRunner

    from phalanx.cli import main
    from phalanx.gnu.cli import main as map_main

    (tmp_path / "phalanx.toml").write_text(f'[tasks.a]\ncmd = "touch {tmp_path / "ran"}"\n', encoding="utf-8")
    done = CliRunner().invoke(main, ["run", "--redact", "A=B", str(tmp_path / "phalanx.toml")])
    assert (done.exit_code, done.output) == (2, "phalanx: error: --redact: 'A=B' is not a variable name: "
                                                "a name holds no '=' and no NUL\n")
    assert map_main(["--redact", "", "touch", str(tmp_path / "ran")]) == 255
    assert capsys.readouterr().err == ("phalanx map: --redact: expected the name of an environment variable "
                                       "(or a pattern such as *_SECRET), got ''\n")
    assert not (tmp_path / "ran").exists()


# ----------------------------------------------------------------------------- 5. permissions


def _modes(root: Path) -> Iterator[tuple[Path, int]]:
    for path in sorted(tree(root)):
        yield path, _mode(path)


def test_private_state_is_user_only_and_reports_follow_the_umask(tmp_path: Path) -> None:
    # The task reports the mode of its run directory (here the one --log-dir makes) and of its
    # output file while it runs; map's test below looks at a temporary run directory.
    (tmp_path / "phalanx.toml").write_text(
        '[tasks.a]\ncmd = \'stat -c %a "$(dirname "$PHALANX_RESULT_FILE")" /proc/self/fd/1 -L\'\n', encoding="utf-8")
    done = phalanx("run", "--output", "always", "--log-dir", "logs", "--html", "report.html", "--junit", "junit.xml",
                   "--trace", "trace.json", cwd=tmp_path, umask=0)
    assert done.returncode == 0, done.stderr
    assert "700\n600\n" in done.stdout
    assert _mode(tmp_path / ".phalanx") == 0o700
    assert {path.name: mode for path, mode in _modes(tmp_path / ".phalanx")} == {
        name: 0o600 for name in os.listdir(tmp_path / ".phalanx")}
    assert _mode(tmp_path / "logs") == 0o700
    assert {mode for _, mode in _modes(tmp_path / "logs")} == {0o600}
    for report in ("report.html", "junit.xml", "trace.json"):
        assert _mode(tmp_path / report) == 0o666  # the user's files: what the umask allows


def test_map_keeps_its_state_private_and_its_results_as_gnu_parallel_makes_them(tmp_path: Path) -> None:
    done = subprocess.run([*PHALANX, "map", "--results", "out", 'stat -c %a "$(dirname "$PHALANX_RESULT_FILE")"; : {}',
                           ":::", "a"], cwd=tmp_path, env=environment(tmp_path), capture_output=True, timeout=60,
                          check=False, umask=0)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "1" / "a" / "stdout").read_text() == "700\n"  # the job's run directory
    assert _mode(tmp_path / ".phalanx") == 0o700 and _mode(tmp_path / ".phalanx" / "journal.db") == 0o600
    # --results DIR as GNU parallel makes it: the umask decides (here: nothing taken away).
    modes = {path.relative_to(tmp_path / "out").as_posix(): mode for path, mode in _modes(tmp_path / "out")}
    assert modes["1"] == modes["1/a"] == 0o777 and modes["1/a/stdout"] == modes["1/a/seq"] == 0o666
