"""Replacement strings and shell quoting for ``phalanx map``, with GNU parallel's meanings.

A command template such as ``convert {} {.}.png`` is parsed once into literal text and
replacement strings, then rendered once per job. The meanings follow GNU parallel
20221122 (checked against it by ``tests/test_templating.py``):

==========  ===========================================================================
``{}``      every arg of the job, each quoted on its own, joined by one space
``{.}``     each arg without its extension: ``x/y/z.tar.gz`` -> ``x/y/z.tar``,
            ``.bashrc`` -> empty (only a dot after the last slash counts)
``{/}``     basename: everything after the last ``/``
``{//}``    dirname, as Perl's ``File::Basename::dirname`` (``.`` for a bare name)
``{/.}``    basename without its extension
``{#}``     the job's sequence number (1-based); ``{%}`` its slot number
``{n}``     the n-th arg (1-based; ``{-1}`` is the last); with ``.``, ``/``, ``//``,
            ``/.`` after the number as above. Out of range -> empty, unquoted.
``{name}``  with ``--header``: the column called ``name`` (also ``{name.}`` etc.)
==========  ===========================================================================

GNU's accidents are kept where they are cheap: ``{0}`` is ``{}`` (and ``{0%}`` is ``{%}``),
``{00}`` and ``{-0}`` are empty, and a negative position wraps twice (with two args ``{-3}``
is the last). Two are not: ``{1#}`` (GNU: the 11th arg's seq) stays text, and ``{/}`` of a
value holding a newline is its real basename (GNU's regex stops at the newline).

Anything else in braces stays literal text, as GNU leaves it (``{..}`` is a ``--plus``
string there, so it is literal by default too), except that with ``--header`` names an
unknown ``{word}`` is an error, so that a misspelt column does not reach the command
(``${word}`` is the shell's and stays). ``{= perl =}`` is refused.

As in GNU, a command whose first word holds a replacement string (``{}``, ``./{1}.sh``)
runs the args as the command: nothing is quoted (``Template.raw_command``).

Quoting differs from GNU in one rule: a replacement string is quoted for the shell context
it stands in (`phalanx.shellquote`). Bare, it gets GNU's quoting byte for byte; inside
``'...'``, ``"..."``, ``$'...'``, ``$((...))``, a here-document or backticks it gets what
makes the value literal there, so ``echo "<{}>"`` with ``a b`` prints ``<a b>`` (GNU prints
``<'a b'>``) and ``echo '{}'`` with ``$(touch x)`` prints it instead of running it. A
replacement string inside the script of a nested shell (``sh -c 'echo {}'``) is parsed
again by that shell: `Template.nested_shell_warning` says so.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError, did_you_mean
from ..shellquote import Placement, ShellQuoteError, analyse, quote as quote_for, shell_quote

__all__ = ["Template", "shell_quote"]

# --- the per-arg transformations -------------------------------------------------------
_EXTENSION = re.compile(r"\.[^/.]*\Z")  # GNU: s:\.[^/.]*$::
# GNU's s:.*/:: stops at a newline (Perl's . does not match it), which makes a
# "basename" of a/b<newline>c/d that still holds a slash; we take the real basename.
_DIRPART = re.compile(r".*/", re.DOTALL)
_TRAILING_SLASHES = re.compile(r"(.)/*\Z", re.DOTALL)


def _no_ext(value: str) -> str:
    return _EXTENSION.sub("", value, count=1)


def _basename(value: str) -> str:
    return _DIRPART.sub("", value, count=1)


def _fileparse_dir(path: str) -> tuple[str, str]:
    # Perl File::Basename::fileparse on Unix: (dirpath including its "/", basename).
    cut = path.rfind("/") + 1
    return (path[:cut] or "./"), path[cut:]


def _dirname(value: str) -> str:
    """Perl ``File::Basename::dirname`` (what GNU's ``{//}`` calls), Unix flavour."""
    directory, base = _fileparse_dir(value)
    directory = _TRAILING_SLASHES.sub(r"\1", directory, count=1)
    if not base:  # "a/b/" is the directory a/b, whose parent is "a"
        directory, _ = _fileparse_dir(directory)
        directory = _TRAILING_SLASHES.sub(r"\1", directory, count=1)
    return directory


_OPS: dict[str, Callable[[str], str]] = {
    "": lambda value: value,
    ".": _no_ext,
    "/": _basename,
    "//": _dirname,
    "/.": lambda value: _no_ext(_basename(value)),
}

# --- parsing ---------------------------------------------------------------------------
_OP = r"(|\.|/|//|/\.)"  # what may follow a number or a name: nothing . / // /.
_BRACES = re.compile(r"\{([^{}]*)\}")
_PERL = re.compile(r"\{=.*?=\}", re.DOTALL)
# GNU allows blanks after the number; ASCII, as Perl's \d and \s on bytes (no "{١}").
_POSITIONAL = re.compile(r"(-?\d+)\s*(|\.|/|//|/\.|#|%)", re.ASCII)
_COLUMN_LIKE = re.compile(r"((?![\d-])[\w-]+)" + _OP)


@dataclass(frozen=True, slots=True)
class _Replacement:
    # "all": every arg; "pos": the arg at `position` (GNU's numbering, may be negative);
    # "seq" / "slot": the job's numbers.
    kind: Literal["all", "pos", "seq", "slot"]
    op: str = ""
    position: int = 0


@dataclass(frozen=True, slots=True)
class _Slot:
    # A replacement string where it stands: its meaning and its shell context.
    replacement: _Replacement
    placement: Placement


_Part = str | _Slot
_SIMPLE = {"": _Replacement("all"), "#": _Replacement("seq"), "%": _Replacement("slot")}
_SIMPLE.update({op: _Replacement("all", op) for op in (".", "/", "//", "/.")})


def _classify(inner: str, columns: dict[str, int]) -> _Replacement | None:
    """What the text between one pair of braces means, or None for literal text."""
    for op in ("", ".", "/", "//", "/."):
        # Names first: GNU rewrites {name} to {n} before it looks at anything else.
        name = inner.removesuffix(op)
        if inner.endswith(op) and name in columns:
            return _Replacement("pos", op, columns[name])
    if inner in _SIMPLE:
        return _SIMPLE[inner]
    positional = _POSITIONAL.fullmatch(inner)
    if positional is None:
        return None
    number, op = positional.groups()
    if number == "0":  # Perl truth: "0" is false, so GNU reads {0} as {}, {0%} as {%} (not {00})
        return _SIMPLE[op]
    if op in ("#", "%"):  # GNU makes {1#} the 11th arg's seq: an accident we leave as text
        return None
    return _Replacement("pos", op, int(number))  # {00} and {-0} are position 0: out of range


def _column_ids(names: Sequence[str] | None) -> dict[str, int]:
    ids: dict[str, int] = {}
    for number, name in enumerate(names or (), start=1):
        if name:  # an empty header field cannot be written as {name}; the first duplicate wins, as in GNU
            ids.setdefault(name, number)
    return ids


@dataclass(frozen=True, slots=True)
class Template:
    """A command (or tag, or env value) template, parsed once and rendered per job.

    Attributes:
        text: the template text (with `` {}`` appended when the args were appended).
        uses_slot: it contains ``{%}``, so rendering needs a slot number.
        uses_seq: it contains ``{#}``.
        has_replacements: it contains at least one replacement string.
        raw_command: a command whose first word holds a replacement string (``{}``,
            ``./{1}.sh``, or an empty command): as in GNU the args are then the command
            and go in unquoted, whatever ``render`` is told.
        nested_shell_warning: for a command with a replacement string inside the script of
            ``sh -c`` (``bash``, ``dash``, ``zsh``, ``ksh`` ...), a one-line warning to print
            once (without the program name or a newline); else None.
    """

    text: str
    uses_slot: bool
    uses_seq: bool
    has_replacements: bool
    raw_command: bool = False
    parts: tuple[_Part, ...] = field(default=(), repr=False, compare=False)
    nested_shell_warning: str | None = field(default=None, compare=False)
    #: ``-X``: (first, end) ranges of `parts`, each a word holding ``{}`` (or ``{.}``...),
    #: rendered once per arg, the copies joined by a space.
    context_words: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        names: Sequence[str] | None = None,
        append_args: bool = False,
        replace: str = "{}",
        context_replace: bool = False,
    ) -> Template:
        """Parse ``text`` into literal text and replacement strings.

        Args:
            text: the template, e.g. ``convert {} {.}.png``.
            names: the column names from ``--header`` (position i is column i+1); then
                ``{name}``, ``{name.}``, ``{name/}``, ``{name//}``, ``{name/.}`` work.
            append_args: this is the command: with no replacement string in it, `` {}`` is
                appended as GNU does (an empty command becomes ``{}``: GNU's
                ``parallel ::: 'echo a'``), and a replacement string in its first word
                makes it a ``raw_command``.
            replace: GNU's ``-I``: this string stands for ``{}`` (and ``{}`` is then text).
            context_replace: GNU's ``-X``: a word (between blanks) holding ``{}``, ``{.}``,
                ``{/}``, ``{//}`` or ``{/.}`` is repeated for each arg.

        Raises:
            ConfigError: a ``{= perl =}`` expression; with ``names``, a ``{word}`` that
                names no column (``${word}`` is left to the shell); or a replacement string
                where no quoting is safe (in a ``<<'EOF'`` here-document, or after ``\\'``
                in ``$'...'``: see `phalanx.shellquote`).
        """
        if _PERL.search(text):
            raise ConfigError(f"perl expressions {{= =}} are not supported (in {text!r})")
        columns = _column_ids(names)
        found: list[tuple[int, int, _Replacement]] = []
        if replace != "{}":
            start = text.find(replace)
            while start >= 0:
                found.append((start, start + len(replace), _Replacement("all")))
                start = text.find(replace, start + len(replace))
        for match in _BRACES.finditer(text):
            if any(begin < match.end() and match.start() < end for begin, end, _ in found):
                continue  # part of an -I string
            replacement = _classify(match.group(1), columns)
            if replace != "{}" and replacement == _SIMPLE[""] and match.group(1) == "":
                continue  # with -I STR, {} is text
            if replacement is None:
                column = _COLUMN_LIKE.fullmatch(match.group(1))
                shell_variable = text[match.start() - 1 : match.start()] == "$"
                if names is not None and column and not shell_variable:
                    raise _unknown_column(match.group(0), column.group(1), text, columns)
                continue
            found.append((match.start(), match.end(), replacement))
        found.sort(key=lambda item: item[0])
        if append_args and not found:
            text = text + " {}" if text.strip() else "{}"
            found = [(len(text) - 2, len(text), _Replacement("all"))]
        try:
            analysis = analyse(text, [(start, end) for start, end, _ in found])
        except ShellQuoteError as error:
            raise ConfigError(f"{error} (in {text!r})") from None
        words = _context_words(text, found, analysis.placements) if context_replace else []
        cuts = sorted({cut for word in words for cut in word})
        parts: list[_Part] = []
        start = 0
        for (begin, end, replacement), placement in zip(found, analysis.placements, strict=True):
            parts += _cut(text, start, begin, cuts)
            parts.append(_Slot(replacement, placement))
            start = end
        parts += _cut(text, start, len(text), cuts)
        kinds = {replacement.kind for _, _, replacement in found}
        # GNU: if "@command" =~ /^[^ \t\n=]*\257</ it does not quote the args at all.
        before = text[: found[0][0]] if found else ""  # the text before the first replacement
        raw = append_args and bool(kinds) and not re.search(r"[ \t\n=]", before)
        warning = None
        if analysis.reparsed and not raw:
            first = analysis.reparsed[0]
            begin, end, _ = found[first.index]
            shown, shell = text[begin:end], first.shell
            warning = (
                f"warning: {shown} inside the script of {shell} -c is parsed again by that shell; "
                f"pass it as an argument instead: {shell} -c 'echo \"$1\"' _ {shown}"
            )
        # Each word in ``parts``: the cuts made every word start and end between two parts.
        offsets: list[int] = []
        at = 0
        found_iter = iter(found)
        for part in parts:
            offsets.append(at)
            at = at + len(part) if isinstance(part, str) else next(found_iter)[1]
        offsets.append(at)
        context = tuple((offsets.index(begin), offsets.index(end, offsets.index(begin) + 1)) for begin, end in words)
        return cls(text, "slot" in kinds, "seq" in kinds, bool(kinds), raw, tuple(parts), warning, context)

    def render(
        self, args: Sequence[str], *, seq: int, slot: int | None = None, quote: bool = True, no_args: bool = False
    ) -> str:
        """The text with each replacement string replaced for one job.

        Args:
            args: the job's args, flattened over input sources and columns.
            seq: the job's sequence number, for ``{#}``.
            slot: the job's slot number, for ``{%}``.
            quote: shell-quote each substituted value (for a command; ignored for a
                ``raw_command``); False puts them in raw (for ``--tagstring`` or an env value).
            no_args: GNU's ``-n0``: the job has no args at all, so ``{}`` is nothing (not
                one empty, quoted arg).

        Raises:
            ValueError: the template uses ``{%}`` and ``slot`` is None (a programming error).
        """
        if self.uses_slot and slot is None:
            raise ValueError(f"template {self.text!r} uses {{%}} but no slot number was given")
        values = tuple(args) or ("",)  # GNU renders a job without args as one empty arg
        quote = quote and not self.raw_command
        if not self.context_words:
            return "".join(self._render_parts(self.parts, values, values, seq, slot, quote, no_args))
        out: list[str] = []
        at = 0
        for first, end in self.context_words:
            out += self._render_parts(self.parts[at:first], values, values, seq, slot, quote, no_args)
            word = self.parts[first:end]
            copies = [
                "".join(self._render_parts(word, (value,), values, seq, slot, quote, no_args)) for value in values
            ]
            out.append(" ".join(copies))
            at = end
        out += self._render_parts(self.parts[at:], values, values, seq, slot, quote, no_args)
        return "".join(out)

    @staticmethod
    def _render_parts(
        parts: Sequence[_Part],
        values: tuple[str, ...],
        every: tuple[str, ...],
        seq: int,
        slot: int | None,
        quote: bool,
        no_args: bool,
    ) -> list[str]:
        """``values`` for ``{}`` and the like; ``every`` (all the job's args) for ``{n}``."""
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            replacement = part.replacement
            if replacement.kind == "all":
                if not no_args:
                    out.append(" ".join(_quoted(_OPS[replacement.op](value), part, quote) for value in values))
            elif replacement.kind == "pos":
                index = _index(replacement.position, len(every))
                if index is not None and not no_args:
                    out.append(_quoted(_OPS[replacement.op](every[index]), part, quote))
            else:
                out.append(str(seq if replacement.kind == "seq" else slot))
        return out


def _context_words(
    text: str, found: Sequence[tuple[int, int, _Replacement]], placements: Sequence[Placement]
) -> list[tuple[int, int]]:
    """``-X``: where each word holding ``{}`` (or ``{.}``...) starts and ends in ``text``.

    A word runs between blanks, as GNU cuts it. Each copy of it must be a piece of shell
    that leaves the context as it found it, or a value could land in a context it was not
    quoted for: a word inside quotes, or that opens or closes them, is refused.

    Raises:
        ConfigError: such a word.
    """
    words: list[tuple[int, int]] = []
    for begin, end, replacement in found:
        if replacement.kind != "all":
            continue
        start = max(text.rfind(" ", 0, begin), text.rfind("\t", 0, begin), text.rfind("\n", 0, begin)) + 1
        stop = min((i for i in (text.find(c, end) for c in " \t\n") if i >= 0), default=len(text))
        if words and start < words[-1][1]:
            words[-1] = (words[-1][0], max(stop, words[-1][1]))
        else:
            words.append((start, stop))
    top = analyse("x", [(0, 1)]).placements[0]
    for start, stop in words:
        inside = [(i, b - start, e - start) for i, (b, e, _) in enumerate(found) if start <= b < stop]
        word = text[start:stop]
        try:
            # An "x" after the word, and one where it starts, tell the context there.
            spans = [(b, e) for _, b, e in inside]
            alone = analyse(word + " x", [*spans, (len(word) + 1, len(word) + 2)]).placements
            before = analyse(text[:start] + "x " + text[start:], [(start, start + 1)]).placements[0]
        except ShellQuoteError:
            alone = ()
        same = bool(alone) and all(alone[n] == placements[i] for n, (i, _, _) in enumerate(inside))
        if not same or alone[-1] != top or before != top:
            raise ConfigError(f"-X: cannot repeat the word {word!r} for each argument: it is inside quotes "
                              f"or opens or closes them (in {text!r})")
    return words


def _cut(text: str, start: int, end: int, cuts: Sequence[int]) -> list[str]:
    """``text[start:end]`` cut at ``cuts``, empty pieces left out."""
    points = [start, *(cut for cut in cuts if start < cut < end), end]
    return [text[a:b] for a, b in itertools.pairwise(points) if a < b]


def _quoted(value: str, slot: _Slot, quote: bool) -> str:
    return quote_for(value, slot.placement) if quote else value


def _index(position: int, count: int) -> int | None:
    """GNU's index for ``{position}`` among ``count`` args, or None (renders as nothing)."""
    # GNU computes $args[$n + position] for position <= 0 and Perl wraps a negative
    # index once more, so with 2 args {-3} is the last one and {-5} is nothing.
    index = position - 1 if position > 0 else count + position
    if index < 0:
        index += count
    return index if 0 <= index < count else None


def _unknown_column(reference: str, word: str, text: str, columns: dict[str, int]) -> ConfigError:
    known = ", ".join(columns) or "(none)"
    guess = did_you_mean(word, columns)
    hint = f" (did you mean {{{guess}}}?)" if guess else ""
    return ConfigError(f"unknown column {reference} in {text!r}{hint}; columns: {known}")
