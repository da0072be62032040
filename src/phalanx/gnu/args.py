"""`phalanx map`'s command line, parsed the way GNU parallel parses its own.

Options come first; the first word that is not an option starts the command, which runs up
to the first ``:::``, ``:::+``, ``::::`` or ``::::+``; then come the input groups. Every
option named after a GNU parallel option keeps GNU's meaning. Bad usage raises
`UsageError`, which the front end turns into one line and exit status 255, as GNU does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..durations import parse_duration
from ..errors import PhalanxError, did_you_mean
from .inputs import InputSource

if TYPE_CHECKING:
    from ..ratelimit import RateLimit

#: What ``--retries 0`` means: no limit (GNU parallel's 2**31 attempts).
UNLIMITED_RETRIES = 2**31

SEPARATORS = {":::": ("args", False), ":::+": ("args", True), "::::": ("file", False), "::::+": ("file", True)}


class UsageError(PhalanxError, ValueError):
    """`phalanx map` was called wrongly; nothing has run."""


@dataclass(frozen=True, slots=True)
class Halt:
    """GNU parallel's ``--halt when,why=N[%]``."""

    when: str  # "now" | "soon" | "never"
    why: str = "fail"  # "fail" | "success" | "done"
    count: float = 1.0
    percent: bool = False


class MapOptions:
    """Everything the command line said (mutable only while parsing).

    A plain class, its defaults class attributes (the lists, each instance's own, made by
    ``__init__``), not a dataclass: building a dataclass of these 43 fields would cost every
    ``phalanx map`` start-up more than reading the command line does.
    """

    jobs: str | None = None  # as given: N, +N, -N, N%, 0, or (phalanx's own) auto, auto:N
    load: float | None = None  # --load MAX: no new job while the load is MAX or more
    memfree: int | None = None  # --memfree SIZE: no new job while less than SIZE is available (0: no limit)
    keep_order: bool = False
    tag: bool = False
    tagstring: str | None = None
    timeout: str | None = None
    retries: int = 1
    halt: Halt = Halt("never")  # frozen: one shared default is safe
    joblog: str | None = None
    resume: bool = False
    resume_failed: bool = False
    results: str | None = None
    dry_run: bool = False
    line_buffer: bool = False
    bar: bool = False
    delay: float = 0.0
    shuf: bool = False
    null: bool = False
    colsep: str | None = None
    csv: bool = False
    header: str | None = None
    max_args: int | None = None  # -n/-N/--max-args: arguments per job (None: one)
    context_replace: bool = False  # -X: as many arguments per job as fit, words with {} repeated
    replace: str = "{}"  # -I STR: STR instead of {}
    delimiter: str | None = None  # -d: what ends an input item (GNU's escapes applied)
    ungroup: bool = False  # -u: output as it comes, not grouped
    pipe: bool = False  # --pipe: stdin split into blocks, one job per block, fed to its stdin
    block_size: int = 1 << 20  # --block SIZE: a --pipe block's size in bytes (GNU's 1M)
    recstart: str | None = None  # --recstart STR: what starts a --pipe record
    recend: str | None = None  # --recend STR: what ends a --pipe record (default: newline)
    rate: RateLimit | None = None  # --rate 50/s: jobs started per period
    rate_tokens: RateLimit | None = None  # --rate-tokens 90000/min: a weighted limit, charged --rate-cost
    rate_cost: str | None = None  # --rate-cost TEMPLATE: a job's cost on --rate-tokens ({3}, {tokens})
    rate_key: str | None = None  # --rate-key TEMPLATE: jobs with different keys are limited apart ({model})
    no_journal: bool = False  # --no-journal (phalanx's own): leave the run out of the run journal
    max_output: int | None = None  # --max-output SIZE (phalanx's own): each job's stdout and stderr kept to SIZE
    backend: str = "local"  # --backend local|dask|ray (phalanx's own): where the jobs run
    scheduler: str | None = None  # --scheduler ADDRESS (phalanx's own): the cluster to connect to
    help: bool = False
    version: bool = False

    def __init__(self) -> None:
        self.command: list[str] = []  # the template's words
        self.sources: list[InputSource] = []  # ::: and :::: groups, -a files
        self.env: list[tuple[str, str | None]] = []  # (NAME, TEMPLATE or None for --env NAME)
        self.redact: list[str] = []  # --redact NAME (phalanx's own): values shown as ***

    def __repr__(self) -> str:
        return f"MapOptions({vars(self)!r})"


def parse_halt(text: str) -> Halt:
    """``now,fail=1``, ``soon,fail=20%``, ``now,success=1``, ``never``, or GNU's old numbers."""
    legacy = {"0": Halt("never"), "1": Halt("soon"), "2": Halt("now"), "-1": Halt("soon", "success"),
              "-2": Halt("now", "success")}
    if text in legacy:
        return legacy[text]
    if text == "never":
        return Halt("never")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if match:
        return Halt("soon", "fail", float(match.group(1)), percent=True)
    match = re.fullmatch(r"(now|soon),(fail|success|done)=(\d+(?:\.\d+)?)(%?)", text)
    if not match:
        raise UsageError(f"--halt {text}: expected when,why=N such as now,fail=1 or soon,fail=20%")
    when, why, number, percent = match.groups()
    count = float(number)
    if count <= 0 or (percent and count > 100):
        raise UsageError(f"--halt {text}: the number must be positive (and at most 100%)")
    return Halt(when, why, count, percent=bool(percent))


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\d+", text):
            raise UsageError(f"{name} {text}: expected a whole number")
        return int(text)

    return parse


def _duration(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return parse_duration(text, what=name)
        except PhalanxError as error:
            raise UsageError(error.message) from None

    return parse


def _jobs(text: str) -> str:
    if text == "auto" or text.startswith("auto:"):
        from ..autoscale import parse_auto  # here: only -j auto pays for the import

        try:
            parse_auto(text, what="-j")
        except PhalanxError as error:
            raise UsageError(error.message) from None
        return text
    if not re.fullmatch(r"[+-]?\d+%?|\d+(\.\d+)?%", text):
        raise UsageError(f"-j {text}: expected N, +N, -N or N%")
    return text


def _load(text: str) -> float:
    """``--load``: GNU parallel's N, N%, +N, -N (`phalanx.autoscale.parse_load`)."""
    from ..autoscale import parse_load

    try:
        return parse_load(text, what="--load")
    except PhalanxError as error:
        raise UsageError(error.message) from None


def _memfree(text: str) -> int:
    """``--memfree``: a size in GNU parallel's units (as ``--block``), or 0 for no limit."""
    return 0 if text.strip() == "0" else parse_size(text, what="--memfree")


def _timeout(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?%", text):
        _duration("--timeout")(text)
    return text


def unquote_printf(text: str) -> str:
    """GNU parallel's ``unquote_printf`` (for ``--tagstring``): ``\\t``, ``\\n``, ``\\r`` and
    octal ``\\NNN`` / ``\\N`` become the characters they name."""
    text = text.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")
    return re.sub(r"\\(\d\d\d|\d)", lambda match: _perl_octal(match.group(1)), text)


def _perl_octal(digits: str) -> str:
    """What Perl makes of ``"\\" + digits``: up to three octal digits, the rest as they are."""
    octal = re.match(r"[0-7]{1,3}", digits)
    if octal is None:
        return digits  # "\8": an unknown escape is the character itself
    return chr(int(octal.group(), 8)) + digits[octal.end() :]


def parse_size(text: str, *, what: str = "--block") -> int:
    """GNU parallel's sizes (``multiply_binary_prefix``): k=10**3, K=Ki=ki=2**10, m=10**6,
    M=Mi=mi=2**20, g/G, t/T, p/P likewise; a fraction is allowed (``1.5M``). ``what``: the
    option, for the error."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([kmgtp]i?|[KMGTP]i?|[KMGTP]I)?", text)
    if not match:
        raise UsageError(f"{what} {text}: expected a size such as 64k, 1M or 1G")
    number, unit = match.groups()
    power = " kmgtp".index(unit[0].lower()) if unit else 0
    base = 1024 if unit and (unit[0].isupper() or len(unit) == 2) else 1000
    size = int(float(number) * base**power)
    if size < 1:
        raise UsageError(f"{what} {text}: the size must be at least 1 byte")
    return size


def _output_cap(text: str) -> int:
    """``--max-output`` (phalanx's own): a size such as 10MB (k, M, G powers of 1000; Ki, Mi,
    Gi powers of 1024, as in a task file: not GNU's --block units); 0 for no cap."""
    from ..limits import parse_output_cap

    try:
        return parse_output_cap(text, what="--max-output")
    except PhalanxError as error:
        raise UsageError(error.message) from None


def _pipe_escapes(text: str) -> str:
    """``--recstart``/``--recend``: GNU's \\0 \\r \\n \\t \\' \\" \\\\ escapes."""
    escapes = {"0": "\0", "r": "\r", "n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
    return re.sub(r"\\([0rnt'\"\\])", lambda match: escapes[match.group(1)], text)


def _env(text: str) -> tuple[str, str | None]:
    name, sep, template = text.partition("=")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(f"--env {text}: expected NAME=TEMPLATE")
    # GNU's --env NAME copies a variable to remote hosts; locally every variable is already
    # inherited, so it changes nothing here. NAME=TEMPLATE sets a per-job value.
    return name, template if sep else None


def _redact(text: str) -> str:
    from ..redact import pattern_problem

    problem = pattern_problem(text)
    if problem is not None:
        raise UsageError(f"--redact: {problem}")
    return text


def _replace(text: str) -> str:
    if not text:
        raise UsageError("-I needs a non-empty replacement string")
    return text


def _rate(option: str, *, weighted: bool = False) -> Callable[[str], RateLimit]:
    def parse(text: str) -> RateLimit:
        from ..ratelimit import Rate, RateLimit  # here: only a run that asks for a rate pays for the import

        try:
            return RateLimit(Rate.parse(text, what=option), weighted=weighted)
        except PhalanxError as error:
            raise UsageError(error.message) from None

    return parse


def _backend(text: str) -> str:
    if text not in ("local", "dask", "ray"):
        raise UsageError(f"--backend must be local, dask or ray, not {text!r}")
    return text


def _delimiter(text: str) -> str:
    delimiter = unquote_printf(text)
    if not delimiter:
        raise UsageError("-d needs a non-empty delimiter")
    return delimiter


_FLAGS = {
    "-k": "keep_order", "--keep-order": "keep_order", "--tag": "tag", "--dry-run": "dry_run",
    "--line-buffer": "line_buffer", "--lb": "line_buffer", "--bar": "bar", "--progress": "bar",
    "--eta": "bar", "--resume": "resume", "--resume-failed": "resume_failed", "--shuf": "shuf",
    "-0": "null", "--null": "null", "--csv": "csv",
    "-X": "context_replace", "-u": "ungroup", "--ungroup": "ungroup",
    "-h": "help", "--help": "help", "--version": "version", "--pipe": "pipe", "--spreadstdin": "pipe",
    "--no-journal": "no_journal",
}
_IGNORED = {"--will-cite", "--no-notice", "--group", "-g"}
_VALUES: dict[str, tuple[str, Callable[[str], object]]] = {
    "-j": ("jobs", _jobs), "--jobs": ("jobs", _jobs), "-P": ("jobs", _jobs), "--max-procs": ("jobs", _jobs),
    "--tagstring": ("tagstring", unquote_printf), "--timeout": ("timeout", _timeout),
    "--retries": ("retries", _positive_int("--retries")), "--halt": ("halt", parse_halt),
    "--halt-on-error": ("halt", parse_halt), "--joblog": ("joblog", str), "--results": ("results", str),
    "--res": ("results", str), "--delay": ("delay", _duration("--delay")), "--colsep": ("colsep", str),
    "-C": ("colsep", str), "--header": ("header", str), "--env": ("env", _env), "-a": ("arg_file", str),
    "--arg-file": ("arg_file", str), "-n": ("max_args", _positive_int("-n")),
    "--max-args": ("max_args", _positive_int("--max-args")), "-N": ("max_args", _positive_int("-N")),
    "--max-replace-args": ("max_args", _positive_int("--max-replace-args")), "-I": ("replace", _replace),
    "-d": ("delimiter", _delimiter), "--delimiter": ("delimiter", _delimiter),
    "--block": ("block_size", parse_size), "--block-size": ("block_size", parse_size),
    "--blocksize": ("block_size", parse_size), "--recstart": ("recstart", _pipe_escapes),
    "--recend": ("recend", _pipe_escapes), "--rate": ("rate", _rate("--rate")),
    "--rate-tokens": ("rate_tokens", _rate("--rate-tokens", weighted=True)), "--rate-cost": ("rate_cost", str),
    "--rate-key": ("rate_key", str), "--max-output": ("max_output", _output_cap),
    "--redact": ("redact", _redact), "--load": ("load", _load), "--memfree": ("memfree", _memfree),
    "--backend": ("backend", _backend), "--scheduler": ("scheduler", str),
}


def parse_map_args(argv: Sequence[str]) -> MapOptions:
    """Parse ``phalanx map``'s arguments.

    Raises:
        UsageError: an unknown option, a missing or malformed value, a bad separator.
    """
    options = MapOptions()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-" or word in SEPARATORS:
            break
        name, has_value, value = word.partition("=") if word.startswith("--") else (word, False, "")
        if not word.startswith("--") and len(word) > 2 and word[:2] in ("-j", "-P", "-C", "-a", "-n", "-N", "-I", "-d"):
            name, has_value, value = word[:2], True, word[2:]  # -j8, -n1
        if name in _FLAGS and not has_value:
            setattr(options, _FLAGS[name], True)
        elif name in _IGNORED and not has_value:
            pass
        elif name in _VALUES:
            if not has_value:
                i += 1
                if i >= len(words):
                    raise UsageError(f"option {name} needs a value")
                value = words[i]
            attribute, convert = _VALUES[name]
            converted = convert(value)
            if attribute == "env":
                options.env.append(converted)  # type: ignore[arg-type]
            elif attribute == "redact":
                options.redact.append(value)
            elif attribute == "arg_file":
                options.sources.append(InputSource("file", path=value))
            else:
                setattr(options, attribute, converted)
        else:
            known = [*_FLAGS, *_VALUES, *_IGNORED]
            hint = did_you_mean(name, known)
            raise UsageError(f"unknown option: {name}" + (f" (did you mean {hint}?)" if hint else ""))
        i += 1
    while i < len(words) and words[i] not in SEPARATORS:
        options.command.append(words[i])
        i += 1
    _parse_sources(words[i:], options)
    if options.tagstring in ("", "0"):
        options.tagstring = None  # Perl: false, so GNU drops it (``$opt::tagstring ||= ...``)
    if options.backend != "local" and (options.pipe or options.ungroup):
        raise UsageError(f"--backend {options.backend} runs the jobs on other machines: "
                         f"{'--pipe' if options.pipe else '-u'} needs them here")
    if options.scheduler is not None and options.backend == "local":
        raise UsageError("--scheduler needs --backend dask or --backend ray")
    if options.resume_failed:
        options.resume = True
    if options.resume and options.joblog is None:
        raise UsageError("--resume needs --joblog FILE")
    if options.retries == 0:
        options.retries = UNLIMITED_RETRIES  # GNU: --retries 0 retries for ever
    if options.rate_tokens is not None and options.rate_cost is None:
        raise UsageError("--rate-tokens needs --rate-cost TEMPLATE: each job's cost, such as {3} or {tokens}")
    if options.rate_cost is not None and options.rate_tokens is None:
        raise UsageError("--rate-cost is charged to --rate-tokens RATE: give one")
    if options.pipe:
        if not options.command:
            raise UsageError("--pipe must have a command to pipe into (e.g. 'cat')")
        if options.sources:
            raise UsageError("--pipe reads its input from standard input: ::: and :::: are not supported with it")
        if options.context_replace:
            raise UsageError("-X cannot be used with --pipe")
        if (options.recstart or "") + (options.recend if options.recend is not None else "\n") == "":
            raise UsageError("--pipe needs a non-empty --recstart or --recend")
    return options


def _parse_sources(words: list[str], options: MapOptions) -> None:
    i = 0
    while i < len(words):
        kind, linked = SEPARATORS[words[i]]
        i += 1
        values: list[str] = []
        while i < len(words) and words[i] not in SEPARATORS:
            values.append(words[i])
            i += 1
        if linked and not options.sources:
            raise UsageError(f"{words[i - len(values) - 1]} links to a previous input source, but there is none")
        if kind == "args":
            options.sources.append(InputSource("args", values=tuple(values), linked=linked))
            continue
        if not values:
            raise UsageError(":::: needs at least one file name")
        # GNU links every file of a ::::+ group, not only the first.
        for path in values:
            options.sources.append(InputSource("file", path=path, linked=linked))
