"""A small CSS reader for the HTML compatibility check, sans I/O.

Not a renderer's parser: it finds what a mail client may drop (at-rules,
selectors, property declarations, functions and units in values) in a
``<style>`` sheet or a ``style=""`` attribute, and never raises on bad CSS
(a mail's CSS is often broken; what cannot be read is skipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import attrs

_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.S)
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"?|'(?:[^'\\]|\\.)*'?", re.S)
_IMPORTANT = re.compile(r"!\s*important\s*$", re.I)
_FUNCTION = re.compile(r"(?<![\w-])(-?[a-zA-Z][\w-]*)\(")
# Possessive: "\d+\.?\d*" split a long run of digits every way before giving up (quadratic in a mail's CSS).
_UNIT = re.compile(r"(?<![\w.#-])[+-]?(?:\d++(?:\.\d*+)?|\.\d++)(%|[a-zA-Z]+)")
_PSEUDO = re.compile(r"(::?)([a-zA-Z][\w-]*)")
# Pseudo-elements CSS 2 wrote with one colon; still read as pseudo-elements.
_LEGACY_PSEUDO_ELEMENTS = frozenset({"before", "after", "first-letter", "first-line"})


@attrs.frozen
class Declaration:
    """``name: value [!important]``; the property name lower-cased, the value as written."""

    name: str
    value: str
    important: bool = False

    @property
    def functions(self) -> frozenset[str]:
        """Function names in the value (``rgba``, ``var``, ``linear-gradient``), lower-cased."""
        return frozenset(name.lower() for name in _FUNCTION.findall(_without_strings(self.value)))

    @property
    def units(self) -> frozenset[str]:
        """Units of the numbers in the value (``px``, ``rem``, ``%``), lower-cased."""
        return frozenset(unit.lower() for unit in _UNIT.findall(_without_urls(_without_strings(self.value))))


@attrs.frozen
class StyleSheet:
    """What a sheet uses: its at-rules (names without ``@``), selectors and declarations."""

    at_rules: tuple[str, ...] = ()
    selectors: tuple[str, ...] = ()
    declarations: tuple[Declaration, ...] = ()

    @property
    def pseudo_classes(self) -> frozenset[str]:
        return frozenset(name for colons, name in self._pseudos() if colons == ":" and name not in _LEGACY_PSEUDO_ELEMENTS)

    @property
    def pseudo_elements(self) -> frozenset[str]:
        return frozenset(name for colons, name in self._pseudos() if colons == "::" or name in _LEGACY_PSEUDO_ELEMENTS)

    def _pseudos(self) -> list[tuple[str, str]]:
        found = []
        for selector in self.selectors:
            bare = re.sub(r"\[[^\]]*\]?", "", _without_strings(selector))  # [href=":x"] is no pseudo-class
            found += [(colons, name.lower()) for colons, name in _PSEUDO.findall(bare)]
        return found


def _without_strings(text: str) -> str:
    return _STRING.sub('""', text)


def _without_urls(text: str) -> str:
    return re.sub(r"url\([^)]*\)?", "url()", text, flags=re.I)


def _outside_strings(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(index, character) of each character of ``text`` from ``start`` that is not inside a string."""
    quote = ""
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = ""
        elif char in "\"'":
            quote = char
        else:
            yield i, char


def _split_top(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside parentheses and strings."""
    parts, depth, start = [], 0, 0
    for i, char in _outside_strings(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_declarations(text: str) -> tuple[Declaration, ...]:
    """The declarations of a ``style=""`` attribute or a rule's block."""
    out = []
    for item in _split_top(_COMMENT.sub(" ", text), ";"):
        name, colon, value = item.partition(":")
        name = name.strip().lower()
        if not colon or not re.fullmatch(r"-?-?[a-z_][\w-]*", name):
            continue
        value = value.strip()
        important = bool(_IMPORTANT.search(value))
        out.append(Declaration(name, _IMPORTANT.sub("", value).strip(), important))
    return tuple(out)


def _block_end(text: str, start: int) -> int:
    """The index just past the ``}`` closing the block whose ``{`` is at ``start`` (or the end)."""
    depth = 0
    for i, char in _outside_strings(text, start):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


# At-rules whose block holds rules rather than declarations.
_GROUPING = frozenset({"media", "supports", "document", "-moz-document", "layer", "container", "keyframes",
                       "-webkit-keyframes"})


def parse_stylesheet(text: str) -> StyleSheet:
    """The at-rules, selectors and declarations of a ``<style>`` element's text."""
    at_rules: list[str] = []
    selectors: list[str] = []
    declarations: list[Declaration] = []
    text = _COMMENT.sub(" ", text)
    pos = 0
    while pos < len(text):
        brace = text.find("{", pos)
        semicolon = text.find(";", pos)
        prelude_end = brace if brace >= 0 else len(text)
        prelude = text[pos:prelude_end].strip()
        if prelude.startswith("@") and 0 <= semicolon < prelude_end:  # @import url(...);
            at_rules.append(_at_name(prelude))
            pos = semicolon + 1
            continue
        if brace < 0:
            break
        end = _block_end(text, brace)
        body = text[brace + 1 : end - 1]
        if prelude.startswith("@"):
            name = _at_name(prelude)
            at_rules.append(name)
            if name in _GROUPING:
                inner = parse_stylesheet(body)
                at_rules += inner.at_rules
                selectors += inner.selectors
                declarations += inner.declarations
            else:  # @font-face, @page: a block of declarations
                declarations += parse_declarations(body)
        else:
            selectors += [s.strip() for s in _split_top(prelude, ",") if s.strip()]
            declarations += parse_declarations(body)
        pos = end
    return StyleSheet(tuple(at_rules), tuple(selectors), tuple(declarations))


def _at_name(prelude: str) -> str:
    found = re.match(r"@(-?[\w-]+)", prelude)
    return found[1].lower() if found else ""
