"""The shell lexer behind `shellquote`: where each placeholder stands in a POSIX-sh (and bash)
command line, and which scripts a nested shell will parse again. Pure: runs nothing."""


from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["Analysis", "Backtick", "Context", "Placement", "Reparse", "ShellQuoteError", "analyse"]

class ShellQuoteError(ValueError):
    """A placeholder stands where no quoting makes its value safe (see the module docs)."""


class Context(Enum):
    """Where a placeholder stands, as the shell reads the template."""

    BARE = "bare"
    SINGLE = "single quotes"
    DOUBLE = "double quotes"
    PARAM = "${...} in double quotes"
    ANSI = "$'...'"
    ARITH = "$((...))"
    HEREDOC = "a here-document"
    COMMENT = "a comment"


@dataclass(frozen=True, slots=True)
class Backtick:
    """One `` `...` `` around a placeholder.

    Attributes:
        in_double: the substitution is inside ``"..."`` (where ``\\"`` is unescaped too).
        after_backslash: in the substitution's own text (before its backslashes are
            removed) a lone backslash stands right before the placeholder.
    """

    in_double: bool
    after_backslash: bool = False


@dataclass(frozen=True, slots=True)
class Placement:
    """One placeholder's context.

    Attributes:
        context: the innermost quoting.
        backticks: one entry per enclosing `` `...` ``, outermost first.
        escaped: a backslash stands right before the placeholder.
        after_dollar: an active ``$`` stands right before the placeholder (or right before
            that backslash).
        in_heredoc: it is inside the body of a here-document (within ``$(...)``, say),
            whose lines bash reads before it parses anything in them.
    """

    context: Context
    backticks: tuple[Backtick, ...] = ()
    escaped: bool = False
    after_dollar: bool = False
    in_heredoc: bool = False


@dataclass(frozen=True, slots=True)
class Reparse:
    """A placeholder inside the script a nested shell parses again (``sh -c '... {} ...'``)."""

    index: int  # into the spans given to `analyse`
    shell: str  # the shell's name as written, without its directory: "sh", "bash"


@dataclass(frozen=True, slots=True)
class Analysis:
    """What `analyse` found: a placement per span, and the spans a nested shell re-parses."""

    placements: tuple[Placement, ...]
    reparsed: tuple[Reparse, ...] = ()


# --- quoting ----------------------------------------------------------------------------
_SUBSCRIPTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[")
_PARAM_NAME = re.compile(r"[#!]?(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!-](?=[}:\[]))")
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh"})
_RESERVED = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"})


def analyse(text: str, spans: Sequence[tuple[int, int]]) -> Analysis:
    """The context of each placeholder in the shell script ``text``.

    Args:
        text: the template.
        spans: each placeholder's (start, end) in ``text``, in order, not overlapping.

    Raises:
        ShellQuoteError: a placeholder stands where no quoting is safe.
    """
    starts = {start: index for index, (start, _) in enumerate(spans)}
    ends = {index: end for index, (_, end) in enumerate(spans)}
    shared = _Shared()
    try:
        _Lexer(text, starts, ends, (), shared).script(0, closing=False)
    except RecursionError:
        raise ShellQuoteError("substitutions nested too deep to tell where the replacement strings stand") from None
    # Every span is reached (the lexer never skips text), but be safe: unseen means bare.
    placements = tuple(shared.placements.get(index, Placement(Context.BARE)) for index in range(len(spans)))
    return Analysis(placements, tuple(shared.reparsed))


# The lexer's working state: plain classes, not dataclasses (which would cost every
# ``phalanx map`` start-up about a millisecond each to build, for nothing these need).


class _Shared:
    """What the lexer finds, shared by every level of it."""

    __slots__ = ("ambiguous", "collectors", "placements", "reparsed")

    def __init__(self) -> None:
        self.placements: dict[int, Placement] = {}
        self.reparsed: list[Reparse] = []
        self.collectors: list[list[int]] = []  # the placeholders of each open word, outermost first
        self.ambiguous = False  # past a \' in $'...': bash and dash no longer agree


class _Word:
    """The word being read."""

    __slots__ = ("ids", "plain", "quoted", "text")

    def __init__(self) -> None:
        self.text: list[str] = []  # quote-removed where plain, else the source
        self.ids: list[int] = []
        self.plain = True  # no expansion and no placeholder in it
        self.quoted = False  # some of it was quoted or escaped

    @property
    def literal(self) -> str | None:
        return "".join(self.text) if self.plain else None


class _Script:
    """The simple command being read, and where it stands in its script."""

    __slots__ = ("case_depth", "case_state", "expect", "heredocs", "paren", "word", "words")

    def __init__(self) -> None:
        self.words: list[_Word] = []
        self.word: _Word | None = None
        self.paren = 0
        self.case_depth = 0
        self.case_state = 0  # 1: the word after "case", 2: expecting "in", 3: after "in"
        self.expect = ""  # what the next word is: "redirect", "heredoc", "heredoc-" (<<-)
        self.heredocs: list[tuple[str, bool, bool]] = []  # delimiter, strip tabs, quoted


class _Lexer:
    def __init__(
        self,
        text: str,
        starts: dict[int, int],
        ends: dict[int, int],
        layers: tuple[tuple[bool, frozenset[int]], ...],
        shared: _Shared,
        in_heredoc: bool = False,
    ) -> None:
        self.in_heredoc = in_heredoc
        self.text = text
        self.starts = starts
        self.ends = ends
        self.sorted_starts = sorted(starts)
        self.layers = layers  # per enclosing backtick: inside "...", the placeholders after a lone backslash
        self.shared = shared

    # -- placeholders
    def place(self, at: int, context: Context, *, escaped: bool = False, after_dollar: bool = False) -> int:
        """Record the placeholder starting at ``at``; return where it ends."""
        index = self.starts[at]
        if self.shared.ambiguous:
            raise ShellQuoteError(
                "a replacement string after \\' inside $'...' cannot be quoted safely (bash and dash "
                "disagree where that string ends); write the quote as \\x27 instead"
            )
        backticks = tuple(Backtick(in_double, index in lone) for in_double, lone in self.layers)
        self.shared.placements[index] = Placement(context, backticks, escaped, after_dollar, self.in_heredoc)
        for ids in self.shared.collectors:
            ids.append(index)
        return self.ends[index]

    def place_between(self, start: int, end: int, context: Context) -> None:
        """Record every placeholder starting in [start, end), where nothing is special."""
        first = bisect.bisect_left(self.sorted_starts, start)
        last = bisect.bisect_left(self.sorted_starts, end)
        for at in self.sorted_starts[first:last]:
            self.place(at, context)

    def backslash(self, i: int, context: Context, *, after_dollar: bool = False) -> int | None:
        """At a backslash: if a placeholder follows, record it as escaped and return its end."""
        if i + 1 in self.starts:
            return self.place(i + 1, context, escaped=True, after_dollar=after_dollar)
        return None

    # -- scripts
    def script(self, i: int, *, closing: bool) -> int:
        """Lex commands from ``i``: to the end, or past the ``)`` that closes a ``$(``."""
        text, n = self.text, len(self.text)
        st = _Script()
        while i < n:
            if i in self.starts:
                word = self.start_word(st)
                word.plain = False
                i = self.place(i, Context.BARE)
                continue
            c = text[i]
            if c == "\\":
                if i + 1 in self.starts:
                    self.start_word(st).plain = False
                    i = self.place(i + 1, Context.BARE, escaped=True)
                elif text.startswith("\n", i + 1):
                    i += 2  # a line continuation
                else:
                    word = self.start_word(st)
                    word.text.append(text[i + 1 : i + 2])
                    word.quoted = True
                    i += 2
            elif c == "'":
                word = self.start_word(st)
                word.quoted = True
                i = self.single(i + 1, word)
            elif c == '"':
                word = self.start_word(st)
                word.quoted = True
                i = self.double(i + 1, word)
            elif c == "$":
                i = self.dollar(i, Context.BARE, self.start_word(st))
            elif c == "`":
                word = self.start_word(st)
                word.plain = False
                i = self.backtick(i + 1, in_double=False)
            elif c == "#" and st.word is None:
                end = text.find("\n", i)
                end = n if end < 0 else end
                self.place_between(i, end, Context.COMMENT)
                i = end
            elif c in " \t":
                self.end_word(st)
                i += 1
            elif c == "\n":
                self.end_command(st)
                i += 1
                pending, st.heredocs = st.heredocs, []
                for delimiter, strip, quoted in pending:
                    i = self.heredoc(i, delimiter, strip=strip, quoted=quoted)
            elif c in ";&|":
                self.end_command(st)
                i += 1
            elif c == "(" and st.word is None and self.arithmetic_command(st, i):
                # bash's (( ... )) and for (( ... )): arithmetic (dash: two subshells, where
                # the arithmetic quoting is safe too)
                i = self.arith(i + 2, closer="))")
            elif c == "(":
                self.end_command(st)
                st.paren += 1
                i += 1
            elif c == ")":
                self.end_command(st)
                i += 1
                if st.paren:
                    st.paren -= 1
                elif st.case_depth:
                    pass  # the end of a case pattern
                elif closing:
                    return i
            elif c in "<>":
                self.end_word(st)
                if (k := self.token(i, "<<<")) is not None:
                    st.expect, i = "redirect", k
                elif (k := self.token(i, "<<-")) is not None:
                    st.expect, i = "heredoc-", k
                elif (k := self.token(i, "<<")) is not None:
                    st.expect, i = "heredoc", k
                else:
                    i += 1
                    while i < n and text[i] in "<>&|":
                        i += 1
                    st.expect = "redirect"
            elif st.word is None and (subscript := _SUBSCRIPTED.match(text, i)) is not None:
                # a[...]=, unset a[...]: bash reads the subscript as arithmetic (dash, as a
                # glob pattern, where the arithmetic quoting is safe too)
                word = self.start_word(st)
                word.text.append(subscript.group())
                word.plain = False
                i = self.arith(subscript.end(), closer="]")
            else:
                self.start_word(st).text.append(c)
                i += 1
        self.end_command(st)
        return n

    def arithmetic_command(self, st: _Script, i: int) -> bool:
        if self.token(i, "((") is None:
            return False
        return not st.words or (len(st.words) == 1 and st.words[0].literal == "for")

    def start_word(self, st: _Script) -> _Word:
        if st.word is None:
            st.word = _Word()
            self.shared.collectors.append(st.word.ids)
        return st.word

    def end_word(self, st: _Script) -> None:
        word, st.word = st.word, None
        if word is None:
            return
        self.shared.collectors.pop()
        expect, st.expect = st.expect, ""
        if expect == "redirect":
            return
        if expect.startswith("heredoc"):
            if word.ids:
                raise ShellQuoteError("a replacement string cannot be a here-document's delimiter (<<{})")
            st.heredocs.append(("".join(word.text), expect == "heredoc-", word.quoted))
            return
        literal = word.literal
        if st.case_state == 1:  # the word a case examines
            st.case_state = 2
            return
        if st.case_state == 2:
            st.case_state = 3 if literal == "in" else 0
            return
        if not st.words or st.case_state == 3:  # a command word (or a case's first pattern)
            st.case_state = 0
            if literal == "case":
                st.case_depth += 1
                st.case_state = 1
                return
            if literal == "esac" and st.case_depth:
                st.case_depth -= 1
                return
            if literal in _RESERVED:
                return
        st.words.append(word)

    def end_command(self, st: _Script) -> None:
        self.end_word(st)
        words, st.words, st.expect = st.words, [], ""
        for k, word in enumerate(words):
            literal = word.literal
            if literal is None or literal.rsplit("/", 1)[-1] not in _SHELLS:
                continue
            script = _nested_script(words, k + 1)
            if script is not None:
                shell = literal.rsplit("/", 1)[-1]
                self.shared.reparsed += [Reparse(index, shell) for index in script.ids]

    # -- quoted text and expansions
    def single(self, i: int, word: _Word) -> int:
        end = self.text.find("'", i)
        end = len(self.text) if end < 0 else end
        self.place_between(i, end, Context.SINGLE)
        word.text.append(self.text[i:end])
        first = bisect.bisect_left(self.sorted_starts, i)
        if first < len(self.sorted_starts) and self.sorted_starts[first] < end:
            word.plain = False
        return end + 1

    def double(self, i: int, word: _Word) -> int:
        text, n = self.text, len(self.text)
        context = Context.DOUBLE
        while i < n:
            if i in self.starts:
                word.plain = False
                i = self.place(i, context)
                continue
            c = text[i]
            if c == '"':
                return i + 1
            if c == "\\":
                end = self.backslash(i, context)
                if end is not None:
                    word.plain = False
                    i = end
                    continue
                pair = text[i : i + 2]
                word.text.append(pair[1:] if pair[1:] in ('"', "\\", "$", "`") else pair)
                i += 2
            elif c == "$":
                i = self.dollar(i, context, word, in_double=True)
            elif c == "`":
                word.plain = False
                i = self.backtick(i + 1, in_double=True)
            else:
                word.text.append(c)
                i += 1
        return n

    def skip(self, j: int) -> int:
        """``j``, past any line continuations (backslash newline: the shell drops them) there."""
        while self.text.startswith("\\\n", j):
            j += 2
        return j

    def token(self, j: int, token: str) -> int | None:
        """Past ``token`` at ``j``, line continuations before and within it skipped; or None."""
        for char in token:
            j = self.skip(j)
            if not self.text.startswith(char, j):
                return None
            j += 1
        return j

    def dollar(self, i: int, context: Context, word: _Word, *, in_double: bool = False) -> int:
        """At a ``$`` in ``context``: the expansion it begins, or a literal ``$``."""
        text = self.text
        j = self.skip(i + 1)  # $\<newline>(...) is $(...)
        if j in self.starts:
            word.plain = False
            return self.place(j, context, after_dollar=True)
        if text.startswith("\\", j):
            end = self.backslash(j, context, after_dollar=True)
            if end is not None:
                word.plain = False
                return end
        if (k := self.token(j, "((")) is not None:
            end = self.arith(k, closer="))")
        elif (k := self.token(j, "(")) is not None:
            end = self.script(k, closing=True)
        elif (k := self.token(j, "[")) is not None:
            end = self.arith(k, closer="]")  # bash; dash reads $[ as text, where ARITH quoting is safe too
        elif (k := self.token(j, "{")) is not None:
            end = self.param(k, quoted=in_double or context is not Context.BARE)
        elif context is Context.BARE and not in_double and (k := self.token(j, "'")) is not None:
            end = self.ansi(k)
        elif context is Context.BARE and not in_double and (k := self.token(j, '"')) is not None:
            end = self.double(k, word)
        else:
            if j < len(text) and (text[j].isalnum() or text[j] in "_@*#?-$!"):
                word.plain = False  # $name, $1, $?: an expansion (a name is lexed as text)
            word.text.append("$")
            return j
        word.plain = False
        return end

    def param(self, i: int, *, quoted: bool) -> int:
        """The inside of ``${...}``: up to its ``}``."""
        text, n = self.text, len(self.text)
        context = Context.PARAM if quoted else Context.BARE
        scratch = _Word()
        # bash reads ${a[...]} and ${x:offset:length} as arithmetic (dash refuses them)
        name = _PARAM_NAME.match(text, i)
        if name is not None:
            i = name.end()
            if text.startswith("[", i):
                i = self.arith(i + 1, closer="]")
            if text.startswith(":", i) and not text.startswith((":-", ":=", ":?", ":+"), i):
                return self.arith(i + 1, closer="}")
        while i < n:
            if i in self.starts:
                i = self.place(i, context)
                continue
            c = text[i]
            if c == "}":
                return i + 1
            if c == "\\":
                end = self.backslash(i, context)
                i = end if end is not None else i + 2
            elif c == "$":
                i = self.dollar(i, context, scratch, in_double=quoted)
            elif c == "`":
                i = self.backtick(i + 1, in_double=quoted)
            elif c == '"':
                i = self.double(i + 1, scratch)  # quotes nest in ${...}, even within "..."
            elif c == "'" and not quoted:
                i = self.single(i + 1, scratch)
            else:
                i += 1
        return n

    def arith(self, i: int, *, closer: str) -> int:
        """Arithmetic, up to ``closer``: ``))`` for ``$((``, ``]`` for ``$[`` and subscripts, ``}``."""
        text, n = self.text, len(self.text)
        opening, closing = {"))": ("(", ")"), "]": ("[", "]"), "}": ("{", "}")}[closer]
        depth = 0
        scratch = _Word()
        while i < n:
            if i in self.starts:
                i = self.place(i, Context.ARITH)
                continue
            c = text[i]
            if c == opening:
                depth += 1
            elif c == closing:
                if depth == 0:
                    return i + 2 if closer == "))" and text.startswith("))", i) else i + 1
                depth -= 1
            elif c == "'":
                # Quotes for the parser, but bash expands what is inside: nothing is safe there.
                quote_end = text.find("'", i + 1)
                quote_end = n if quote_end < 0 else quote_end
                if bisect.bisect_left(self.sorted_starts, i) < bisect.bisect_left(self.sorted_starts, quote_end):
                    raise ShellQuoteError(
                        "a replacement string inside '...' within $((...)) cannot be quoted: "
                        "bash expands it there; leave out the single quotes"
                    )
                i = quote_end + 1
                continue
            elif c == "\\":
                end = self.backslash(i, Context.ARITH)
                i = end if end is not None else i + 2
                continue
            elif c == "$":
                i = self.dollar(i, Context.ARITH, scratch, in_double=True)
                continue
            elif c == "`":
                i = self.backtick(i + 1, in_double=False)
                continue
            elif c == '"':
                i = self.double(i + 1, scratch)
                continue
            i += 1
        return n

    def ansi(self, i: int) -> int:
        """The inside of ``$'...'``: up to its closing quote."""
        text, n = self.text, len(self.text)
        while i < n:
            if i in self.starts:
                i = self.place(i, Context.ANSI)
                continue
            c = text[i]
            if c == "'":
                return i + 1
            if c == "\\":
                end = self.backslash(i, Context.ANSI)
                if end is not None:
                    i = end
                    continue
                if text.startswith("'", i + 1):
                    self.shared.ambiguous = True  # dash ends the string here
                i += 2
                continue
            i += 1
        return n

    def backtick(self, i: int, *, in_double: bool) -> int:
        """The inside of `` `...` ``: its body unescaped, lexed as a script of its own."""
        text, n = self.text, len(self.text)
        body: list[str] = []
        length = 0
        starts: dict[int, int] = {}
        ends: dict[int, int] = {}
        after_backslash: set[int] = set()
        unescaped = '$`\\"' if in_double else "$`\\"
        while i < n:
            if i in self.starts:
                index = self.starts[i]
                piece = text[i : self.ends[index]]
                starts[length] = index
                ends[index] = length + len(piece)
                body.append(piece)
                length += len(piece)
                i = self.ends[index]
                continue
            c = text[i]
            if c == "`":
                i += 1
                break
            if c == "\\" and i + 1 in self.starts:
                after_backslash.add(self.starts[i + 1])
                piece = c
                i += 1
            elif c == "\\" and i + 1 < n:
                piece = text[i + 1] if text[i + 1] in unescaped else text[i : i + 2]
                i += 2
            else:
                piece = c
                i += 1
            body.append(piece)
            length += len(piece)
        layers = (*self.layers, (in_double, frozenset(after_backslash)))
        lexer = _Lexer("".join(body), starts, ends, layers, self.shared, self.in_heredoc)
        lexer.script(0, closing=False)
        return i

    def heredoc(self, i: int, delimiter: str, *, strip: bool, quoted: bool) -> int:
        """A here-document's body, from the start of its first line to past its delimiter line."""
        outer, self.in_heredoc = self.in_heredoc, True
        try:
            return self._heredoc(i, delimiter, strip=strip, quoted=quoted)
        finally:
            self.in_heredoc = outer

    def _heredoc(self, i: int, delimiter: str, *, strip: bool, quoted: bool) -> int:
        text, n = self.text, len(self.text)
        scratch = _Word()
        while i < n:
            newline = text.find("\n", i)
            line_end = n if newline < 0 else newline
            line = text[i:line_end]
            if (line.lstrip("\t") if strip else line) == delimiter:
                return min(line_end + 1, n)
            if quoted:
                first = bisect.bisect_left(self.sorted_starts, i)
                if first < len(self.sorted_starts) and self.sorted_starts[first] < line_end:
                    raise ShellQuoteError(
                        f"a replacement string inside a here-document with a quoted delimiter (<<'{delimiter}') "
                        f"cannot be quoted: its body is taken literally; unquote the delimiter (<<{delimiter})"
                    )
                i = line_end + 1
                continue
            while i < n:
                if i in self.starts:
                    i = self.place(i, Context.HEREDOC)
                    continue
                c = text[i]
                if c == "\n":
                    i += 1
                    break
                if c == "\\":
                    end = self.backslash(i, Context.HEREDOC)
                    if end is not None:
                        i = end
                        continue
                    if text.startswith("\n", i + 1):
                        i += 2
                        break
                    i += 2
                elif c == "$":
                    i = self.dollar(i, Context.HEREDOC, scratch, in_double=True)
                elif c == "`":
                    i = self.backtick(i + 1, in_double=False)
                else:
                    i += 1
        return n


def _nested_script(words: list[_Word], k: int) -> _Word | None:
    """The script word of a shell invoked with ``-c`` whose options start at ``words[k]``."""
    has_c = False
    while k < len(words):
        literal = words[k].literal
        if literal in ("--", "-"):
            k += 1
            break
        if literal is None or len(literal) < 2 or literal[0] not in "-+":
            break
        if literal.startswith("--"):  # bash's long options: --norc, --posix
            k += 1
            continue
        has_c = has_c or (literal[0] == "-" and "c" in literal[1:])
        k += 2 if literal[-1] in "oO" else 1  # -o NAME takes the next word
    return words[k] if has_c and k < len(words) else None

