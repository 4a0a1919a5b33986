"""The HTML compatibility check and a message's links, sans I/O.

Which HTML elements, attributes and CSS of a message's HTML body the major
mail clients do not support (or support only in part), from caniemail's
data as ``data/caniemail.json`` (derived by ``tools/derive_caniemail.py``;
MIT licence, notice in ``data/CANIEMAIL-LICENSE``).  The HTML is read with
the standard library's :mod:`html.parser`, the CSS of ``<style>`` elements
and ``style=""`` attributes with :mod:`tlsmta.devrelay._css`.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable
from html.parser import HTMLParser
from importlib import resources
from typing import Any

import attrs

from tlsmta.devrelay._css import Declaration, StyleSheet, parse_declarations, parse_stylesheet

FEATURE_URL = "https://www.caniemail.com/features/{slug}/"
# URLs in a text/plain body: up to whitespace or a character that usually closes a sentence around one.
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.I)


@attrs.frozen
class Link:
    """A URL in a message: ``kind`` is ``link`` (``<a href>``), ``image`` (``<img src>``,
    ``background=``) or ``text`` (written out in the text/plain body)."""

    url: str
    kind: str


class _HtmlFacts(HTMLParser):
    """What the HTML uses: counted markers (``video``, ``@align``, ``input:checkbox``), its CSS, its links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.markers: Counter[str] = Counter()
        self.styles: list[str] = []  # <style> element texts
        self.inline: list[Declaration] = []  # style="" declarations
        self.links: list[Link] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        self.markers[tag] += 1
        values = {name: value or "" for name, value in attributes}
        for name in values:
            self.markers["@" + name] += 1
        if "type" in values:
            self.markers[f"{tag}:{values['type'].strip().lower()}"] += 1
        elif tag == "button":
            self.markers["button:submit"] += 1  # a button's default type
        elif tag == "input":
            self.markers["input:text"] += 1
        if "style" in values:
            self.inline += parse_declarations(values["style"])
        if tag == "a" and values.get("href"):
            self.links.append(Link(values["href"].strip(), "link"))
        if tag == "img" and values.get("src"):
            self.links.append(Link(values["src"].strip(), "image"))
        if values.get("background"):
            self.links.append(Link(values["background"].strip(), "image"))
        self._in_style = tag == "style"

    def handle_startendtag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attributes)
        self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _facts(html: str) -> _HtmlFacts:
    facts = _HtmlFacts()
    facts.feed(html)
    facts.close()
    return facts


@functools.cache
def caniemail() -> dict[str, Any]:
    """The shipped data set (read once)."""
    return dict(json.loads(resources.files("tlsmta.devrelay").joinpath("data", "caniemail.json").read_text("utf-8")))


def _css_markers(sheet: StyleSheet, declarations: Iterable[Declaration]) -> Counter[str]:
    """``kind:name`` counts for the CSS a message uses (``properties:display``, ``units:rem``)."""
    found: Counter[str] = Counter()
    found.update(f"at_rules:{name}" for name in sheet.at_rules)
    found.update(f"pseudo_classes:{name}" for name in sheet.pseudo_classes)
    found.update(f"pseudo_elements:{name}" for name in sheet.pseudo_elements)
    for item in declarations:
        found[f"properties:{item.name}"] += 1
        found[f"property_value:{item.name}:{item.value.strip().lower()}"] += 1
        found.update(f"functions:{name}" for name in item.functions)
        found.update(f"units:{unit}" for unit in item.units)
        if item.important:
            found["important:!important"] += 1
    return found


def _client(key: str, names: dict[str, str]) -> str:
    family, _, platform = key.partition(".")
    return f"{names.get(family, family)} ({names.get(platform, platform)})"


def html_problems(html: str) -> list[dict[str, Any]]:
    """Each caniemail feature the HTML uses that some major client does not support or
    supports in part, most unsupported first (JSON-ready)."""
    facts = _facts(html)
    sheet = parse_stylesheet("\n".join(facts.styles))
    css = _css_markers(sheet, [*sheet.declarations, *facts.inline])
    data = caniemail()
    names = data["names"]
    problems = []
    for slug, feature in data["features"].items():
        kind, wanted = feature["match"]["kind"], feature["match"]["names"]
        if kind in ("elements", "element_type"):
            hits = {name: facts.markers[name] for name in wanted}
        elif kind == "attributes":
            hits = {name: facts.markers["@" + name] for name in wanted}
        else:
            hits = {name: css[f"{kind}:{name}"] for name in wanted}
        used = {name: count for name, count in hits.items() if count}
        if not used:
            continue
        problems.append({
            "feature": slug,
            "title": feature["title"],
            "found": sorted(used),
            "count": sum(used.values()),
            "unsupported": [_client(key, names) for key in feature["unsupported"]],
            "partial": [{"client": _client(key, names), "note": note} for key, note in feature["partial"].items()],
            "url": FEATURE_URL.format(slug=slug),
        })
    problems.sort(key=lambda p: (-len(p["unsupported"]), -len(p["partial"]), p["feature"]))
    return problems


def links_of(html: str | None, text: str | None) -> list[Link]:
    """The message's links and image URLs, in order, each once: the HTML body's first,
    then URLs written in the text body."""
    found = _facts(html).links if html else []
    found += [Link(url.rstrip(".,;:!?"), "text") for url in _TEXT_URL.findall(text or "")]
    seen: set[str] = set()
    out = []
    for link in found:
        if link.url and link.url not in seen:
            seen.add(link.url)
            out.append(link)
    return out
