r"""Quote a value for the shell context a placeholder stands in, so that it arrives literally.

A command template such as ``echo "<{}>" '{}' {}`` is a POSIX shell script with holes in it.
GNU parallel fills every hole with the same single-quoted text, which is right only for a
bare hole: inside ``'...'`` the value's own quotes close the template's and the rest of the
value runs (``echo '{}'`` with ``$(touch PWNED)`` creates PWNED). This module lexes the
template once (`analyse`), tells each placeholder's context, and quotes each value for its
context (`quote`); `quote_placeholders` does both for a template and a pattern.

===========  ========================================================================
context      how a value is put in
===========  ========================================================================
``BARE``     the caller's quoting, by default GNU parallel's (`shell_quote`), unchanged
``SINGLE``   ``'...'``: each ``'`` becomes ``'\''`` (close, an escaped quote, reopen)
``DOUBLE``   ``"..."``: a backslash before each ``$`` ````` ``"`` ``\``
``PARAM``    the word of ``${x:-...}`` within ``"..."`` or a here-document: as ``DOUBLE``
             and ``}`` too; ``'`` as ``"'"`` (bash pairs single quotes even there)
``ANSI``     ``$'...'``: as is without ``'`` or ``\``; else close, bare quoting, ``$'``
``ARITH``    arithmetic, where bash expands ``$(...)`` even inside ``'...'``: ``$((...))``,
             ``$[...]``, ``((...))``, ``for ((...))``, subscripts (``${a[...]}``,
             ``a[...]=``) and ``${x:offset:length}``. As is if made of
             ``[A-Za-z0-9_ +-*/%=!^~?:,.]`` and tabs (the value is the expression), else
             every other character backslash-escaped: an arithmetic error, never a
             command (where dash reads plain text there, that is literal text)
``HEREDOC``  the body of ``<<EOF``: a backslash before ``$`` ````` ``\``, and ``${-+}``
             (always empty) at the start of each line of the value, so that no line of
             it can be the delimiter
``COMMENT``  after ``#``: the bare quoting, each newline followed by ``#``
===========  ========================================================================

Inside ``$(...)`` and ``${...}`` the lexer carries on (the body of ``$(...)`` is a script
of its own: bare there is bare). Inside backticks it removes the backslashes the shell
removes (``\\``, ``\```, ``\$``, and ``\"`` within ``"..."``), lexes the body as a
script, and `quote` doubles the backslashes and escapes the backticks of what it puts in,
once per level. Within a here-document's body, anything put in (in ``$(...)`` there, say)
also starts each of its lines with a mark (``''``, or ``${-+}`` in double quotes), because
bash reads the body's lines, looks for the delimiter and joins lines ending in ``\`` before
it parses what is in them.

Choices where shells differ or the template is odd:

* ``$'...'`` is lexed as bash, ksh, zsh and POSIX 2024 read it (a backslash escapes the
  next character). dash reads ``$`` and a plain ``'...'``; the two readings end the string
  at the same place unless it holds ``\'``, so a placeholder after ``\'`` in ``$'...'`` is
  refused (`ShellQuoteError`): no quoting is safe for both. The values put in are safe
  under both readings (dash shows a ``$`` where bash reopens ``$'``).
* A placeholder in the body of a here-document with a quoted delimiter (``<<'EOF'``) is
  refused: the body is taken literally, so a line of the value equal to the delimiter
  would end it, and nothing can escape that.
* A placeholder right after a backslash (``\{}``): bare, the backslash is eaten by a
  newline put in first (a line continuation) so the value arrives whole; elsewhere a
  second backslash is put in, so the template's backslash stays the literal one it was.
* A placeholder right after an active ``$`` (``${}``, ``${1}``): ``""`` is put in between,
  so that ``$`` cannot begin an expansion with the value (bash reads ``$""`` as an empty
  string; dash leaves a literal ``$``).
* ``case`` patterns inside ``$(...)`` are followed so that their ``)`` does not end the
  substitution; ``$((`` is always arithmetic; a line continuation (backslash newline) is
  skipped wherever the shell drops it (``$\<newline>(`` is ``$(``), but inside a
  here-document it ends a line, as dash reads it.
* A placeholder in ``'...'`` within arithmetic, or as a here-document's delimiter, is
  refused.

`analyse` also reports placeholders inside the script of a nested shell (``sh -c '{}'``,
``bash -xc "...{}..."``, anywhere in a simple command): the outer shell hands such a value
over literally and the inner shell parses it again. Nothing can be quoted for that without
knowing the word is a script, so the caller is told (`Analysis.reparsed`) and can warn.
The same holds, unreported, for any command that treats an argument as code: ``eval``,
``ssh host CMD``, ``su -c``, and bash's builtins that take a name with a subscript
(``unset``, ``printf -v``, ``[[ -v``), which evaluate ``$(...)`` in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "Analysis",
    "Backtick",
    "Context",
    "Placement",
    "Reparse",
    "ShellQuoteError",
    "analyse",
    "quote",
    "quote_placeholders",
    "shell_quote",
]

from .shelllex import Analysis, Backtick, Context, Placement, Reparse, ShellQuoteError, analyse

_SAFE = re.compile(r"[-_.+a-zA-Z0-9/]*")


def shell_quote(value: str) -> str:
    """Quote ``value`` for a POSIX shell exactly as GNU parallel's default quoting does.

    A value made only of ``[-_.+a-zA-Z0-9/]`` is left as is; ``""`` becomes ``''``;
    anything else is wrapped in single quotes with each ``'`` written as ``'"'"'``, and
    then a ``''`` left at either end is dropped (``it's`` -> ``'it'"'"'s'``).
    """
    if value == "":
        return "''"
    if _SAFE.fullmatch(value):
        return value
    quoted = "'" + value.replace("'", "'\"'\"'") + "'"
    # GNU strips these so a value starting or ending in ' reads ''"'"'x -> "'"'x.
    quoted = quoted.removeprefix("''")
    return quoted.removesuffix("''")


_DOUBLE_SPECIAL = re.compile(r'([$`"\\])')
_PARAM_SPECIAL = re.compile(r'([$`"\\}])')
_HEREDOC_SPECIAL = re.compile(r"([$`\\])")
_ARITH_PLAIN = re.compile(r"[A-Za-z0-9_ \t+\-*/%=!^~?:,.]*")
_ARITH_SPECIAL = re.compile(r"[^A-Za-z0-9_]")
_BREAKER = "${-+}"  # "$-" is always set, so this is always the empty string; no line equals a delimiter with it


def _arith(value: str) -> str:
    if _ARITH_PLAIN.fullmatch(value):
        return value
    return _ARITH_SPECIAL.sub(lambda m: "'\n'" if m.group() == "\n" else "\\" + m.group(), value)


def quote(value: str, placement: Placement, *, bare: Callable[[str], str] = shell_quote) -> str:
    """``value`` quoted for ``placement``, so that the shell reads it back literally.

    Args:
        value: the text to put in.
        placement: where it goes, from `analyse`.
        bare: the quoting for a bare placeholder (GNU parallel's by default; ``shlex.quote``
            works as well). It must return text the shell reads back as one literal word,
            with any newline inside single quotes.
    """
    context, in_heredoc = placement.context, placement.in_heredoc
    if context is Context.ANSI:
        plain = not in_heredoc and "'" not in value and "\\" not in value
        text = value if plain else "'" + _quote(value, Context.BARE, in_heredoc, bare) + "$'"
    else:
        text = _quote(value, context, in_heredoc, bare)
    if placement.escaped:
        # Bare, the backslash escapes our first character: a newline after it is a line
        # continuation, which vanishes. Elsewhere it is (or may be) literal: double it.
        text = ("\n" + ('""' if placement.after_dollar else "") if context is Context.BARE else "\\") + text
    elif placement.after_dollar:
        text = '""' + text
    for layer in reversed(placement.backticks):
        # In `...` the shell turns \\ into \, \` into ` and \$ into $ (\" into " within
        # "..."). Doubling every backslash leaves only our escaped backticks to undo.
        text = text.replace("\\", "\\\\").replace("`", "\\`")
        if layer.after_backslash:
            text = "\\" + text  # pairs with that backslash, which the shell turns back into one
    return text


# What starts a line of the value inside a here-document's body, so that no line of it can be
# the delimiter and no backslash of it can join two lines (bash reads the body's lines, and
# joins a line ending in a backslash to the next, before it parses what is in them).
_MARK = {Context.BARE: "''", Context.SINGLE: "''", Context.DOUBLE: _BREAKER, Context.PARAM: _BREAKER,
         Context.ARITH: _BREAKER}


def _quote(value: str, context: Context, in_heredoc: bool, bare: Callable[[str], str]) -> str:
    if context is Context.BARE:
        text = bare(value)
    elif context is Context.SINGLE:
        text = value.replace("'", "'\\''")
    elif context is Context.DOUBLE:
        text = _DOUBLE_SPECIAL.sub(r"\\\1", value)
    elif context is Context.PARAM:
        # bash pairs single quotes even here (and then keeps them): put a lone one in "".
        text = _PARAM_SPECIAL.sub(r"\\\1", value).replace("'", "\"'\"")
    elif context is Context.ARITH:
        text = _arith(value)
    elif context is Context.HEREDOC:
        return _BREAKER + _HEREDOC_SPECIAL.sub(r"\\\1", value).replace("\n", "\n" + _BREAKER)
    else:  # a comment: as GNU, but a newline must not end the comment
        return bare(value).replace("\n", "\n#")
    if in_heredoc:
        mark = _MARK[context]
        text = mark + text.replace("\n", mark + "\n" + mark)
    return text


def quote_placeholders(
    template: str,
    find: str | re.Pattern[str],
    value_for: Callable[[re.Match[str]], str | None],
    *,
    bare: Callable[[str], str] = shell_quote,
) -> str:
    """Replace each match of ``find`` in the shell script ``template`` by its value, quoted for its context.

    Args:
        template: a shell command line (``sh -c`` text).
        find: a placeholder (``"{item}"``) or a pattern for several.
        value_for: the value for one match, or None to leave that match as it is.
        bare: the quoting for a bare placeholder (GNU parallel's by default).

    Raises:
        ShellQuoteError: a placeholder stands where no quoting is safe (inside a quoted
            here-document, or after ``\\'`` in ``$'...'``).

    Example::

        quote_placeholders("echo '<{item}>' {item}", "{item}", lambda _: "it's")
        # -> "echo '<it'\\''s>' 'it'\"'\"'s'"
    """
    pattern = re.compile(re.escape(find)) if isinstance(find, str) else find
    matches: list[tuple[re.Match[str], str]] = []
    for match in pattern.finditer(template):
        value = value_for(match)
        if value is not None:
            matches.append((match, value))
    analysis = analyse(template, [m.span() for m, _ in matches])
    out: list[str] = []
    start = 0
    for (match, value), placement in zip(matches, analysis.placements, strict=True):
        out += [template[start : match.start()], quote(value, placement, bare=bare)]
        start = match.end()
    out.append(template[start:])
    return "".join(out)


# --- lexing -----------------------------------------------------------------------------
