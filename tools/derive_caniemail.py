"""Derive tlsmta/devrelay/data/caniemail.json from a checkout of caniemail.

    git clone https://github.com/hteumeuleu/caniemail
    python tools/derive_caniemail.py caniemail > tlsmta/devrelay/data/caniemail.json

caniemail (MIT, Rémi Parmentier; notice in tlsmta/devrelay/data/CANIEMAIL-LICENSE)
keeps one Markdown file per feature in ``_features/`` whose front matter
holds a support table per client and version.  We keep, per feature the
HTML check can recognise, what to look for (``match``) and the major
clients whose latest tested version does not support it (``unsupported``)
or supports it only in part (``partial``, with caniemail's note).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

# The major clients; caniemail has more (regional webmails) that would only add noise.
FAMILIES = ("apple-mail", "gmail", "outlook", "yahoo", "thunderbird", "samsung-email", "aol", "protonmail", "fastmail")

# Features found by something other than their name, or not at all (None).
OVERRIDES: dict[str, dict[str, object] | None] = {
    "css-display-flex": {"kind": "property_value", "names": ["display:flex", "display:inline-flex"]},
    "css-display-grid": {"kind": "property_value", "names": ["display:grid", "display:inline-grid"]},
    "css-display-none": {"kind": "property_value", "names": ["display:none"]},
    "css-left-right-top-bottom": {"kind": "properties", "names": ["left", "right", "top", "bottom"]},
    "css-important": {"kind": "important", "names": ["!important"]},
    "css-variables": {"kind": "functions", "names": ["var"]},
    "css-rgb": {"kind": "functions", "names": ["rgb"]},
    "css-rgba": {"kind": "functions", "names": ["rgba"]},
    "css-unit-percent": {"kind": "units", "names": ["%"]},
    "css-unit-calc": {"kind": "functions", "names": ["calc"]},
    "css-linear-gradient": {"kind": "functions", "names": ["linear-gradient", "repeating-linear-gradient"]},
    "css-radial-gradient": {"kind": "functions", "names": ["radial-gradient", "repeating-radial-gradient"]},
    "css-conic-gradient": {"kind": "functions", "names": ["conic-gradient", "repeating-conic-gradient"]},
    "css-at-media-device-pixel-ratio": None,  # media features: @media itself is matched
    "css-at-media-hover": None,
    "css-at-media-orientation": None,
    "css-at-media-prefers-color-scheme": None,
    "css-at-media-prefers-reduced-motion": None,
    "css-unit-initial": None,
    "css-comments": None,
    "css-modern-color": None,
    "css-nesting": None,
    "css-sytem-ui": None,
    "css-inert-attribute": {"kind": "attributes", "names": ["inert"]},
    "css-block-inline-size": {"kind": "properties", "names": ["block-size", "inline-size"]},
    "css-column-layout-properties": {"kind": "properties", "names": [
        "column-count", "column-fill", "column-gap", "column-rule", "column-span", "column-width", "columns"]},
    "css-gap": {"kind": "properties", "names": ["gap", "row-gap", "column-gap"]},
    "css-scroll-snap": {"kind": "properties", "names": ["scroll-snap-type", "scroll-snap-align"]},
    "css-border-inline-block-individual": None,
    "css-border-inline-block-longhand": None,
    "css-border-radius-logical": None,
    "css-margin-block-start-end": {"kind": "properties", "names": ["margin-block-start", "margin-block-end"]},
    "css-margin-inline-start-end": {"kind": "properties", "names": ["margin-inline-start", "margin-inline-end"]},
    "css-margin-inline-block": {"kind": "properties", "names": ["margin-inline", "margin-block"]},
    "css-padding-block-start-end": {"kind": "properties", "names": ["padding-block-start", "padding-block-end"]},
    "css-padding-inline-start-end": {"kind": "properties", "names": ["padding-inline-start", "padding-inline-end"]},
    "css-padding-inline-block": {"kind": "properties", "names": ["padding-inline", "padding-block"]},
    "css-intrinsic-size": None,
    "css-function-light-dark": {"kind": "functions", "names": ["light-dark"]},
    "html-h1-h6": {"kind": "elements", "names": ["h1", "h2", "h3", "h4", "h5", "h6"]},
    "html-lists": {"kind": "elements", "names": ["ul", "ol", "li", "dl", "dt", "dd"]},
    "html-image-maps": {"kind": "elements", "names": ["map", "area"]},
    "html-button-reset": {"kind": "element_type", "names": ["button:reset"]},
    "html-button-submit": {"kind": "element_type", "names": ["button:submit"]},
    "html-input-checkbox": {"kind": "element_type", "names": ["input:checkbox"]},
    "html-input-hidden": {"kind": "element_type", "names": ["input:hidden"]},
    "html-input-radio": {"kind": "element_type", "names": ["input:radio"]},
    "html-input-reset": {"kind": "element_type", "names": ["input:reset"]},
    "html-input-submit": {"kind": "element_type", "names": ["input:submit"]},
    "html-input-text": {"kind": "element_type", "names": ["input:text"]},
    "html-loading-attribute": {"kind": "attributes", "names": ["loading"]},
    "html-meta-color-scheme": None,
    "html-anchor-links": None,
    "html-mailto-links": None,
    "html-doctype": None,
    "html-comments": None,
    "html-rp": {"kind": "elements", "names": ["rp"]},
    "html-rt": {"kind": "elements", "names": ["rt"]},
    "html-strike": {"kind": "elements", "names": ["strike"]},
}

ATTRIBUTE_FEATURES = {"align", "background", "cellpadding", "cellspacing", "dir", "height", "hidden", "lang",
                      "required", "role", "srcset", "target", "valign", "width", "popover"}


def front_matter(text: str) -> dict[str, object]:
    """The keys we use from a feature's front matter: flat ``key: value`` lines and the
    JSON-like ``stats``/``notes_by_num`` blocks (bare keys, trailing commas)."""
    head = re.split(r"(?m)^---\s*$", text, maxsplit=2)[1]
    out: dict[str, object] = {}
    for line in head.splitlines():
        found = re.match(r"^(title|category|description|keywords):\s*(.*)$", line)
        if found:
            out[found[1]] = found[2].strip().strip('"')
    for block in ("stats", "notes_by_num"):
        found = re.search(rf"^{block}:\s*\{{", head, re.M)
        if found:
            body = balanced(head, found.end() - 1)
            body = re.sub(r"(?m)^(\s*)([A-Za-z0-9_.-]+)\s*:", r'\1"\2":', body)
            body = re.sub(r",(\s*[}\]])", r"\1", body)
            out[block] = json.loads(body)
    return out


def balanced(text: str, start: int) -> str:
    """The ``{...}`` block opening at ``start`` (braces inside strings not counted)."""
    depth, quoted = 0, False
    for i in range(start, len(text)):
        char = text[i]
        if char == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and char == "{":
            depth += 1
        elif not quoted and char == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise ValueError("unbalanced braces")


def match_of(slug: str, feature: dict[str, object]) -> dict[str, object] | None:
    """What the HTML check looks for, or None for a feature it cannot recognise."""
    if slug in OVERRIDES:
        return OVERRIDES[slug]
    category, _, rest = slug.partition("-")
    description = str(feature.get("description", "")) + " " + str(feature.get("title", ""))
    if category == "html":
        if rest.startswith("aria-") or rest in ATTRIBUTE_FEATURES:
            return {"kind": "attributes", "names": [rest]}
        elements = sorted(set(re.findall(r"<([a-z][a-z0-9]*)>", description)))
        return {"kind": "elements", "names": elements or [rest]}
    if category != "css" or rest.startswith("selector-"):
        return None
    for prefix, kind in (("at-", "at_rules"), ("pseudo-class-", "pseudo_classes"),
                         ("pseudo-element-", "pseudo_elements"), ("unit-", "units"), ("function-", "functions")):
        if rest.startswith(prefix):
            return {"kind": kind, "names": [rest.removeprefix(prefix)]}
    names = {rest} | {n for n in re.findall(r"`([a-z][a-z-]*)`", description) if "-" in n or n == rest}
    return {"kind": "properties", "names": sorted(names)}


def latest(versions: dict[str, str]) -> str:
    """The support word of the last version listed (caniemail lists them oldest first)."""
    return list(versions.values())[-1] if versions else "u"


def support(feature: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    unsupported: list[str] = []
    partial: dict[str, str] = {}
    notes = feature.get("notes_by_num") or {}
    stats = feature.get("stats") or {}
    assert isinstance(stats, dict) and isinstance(notes, dict)
    for family in FAMILIES:
        for platform, versions in (stats.get(family) or {}).items():
            word = latest(versions)
            client = f"{family}.{platform}"
            if word.startswith("n"):
                unsupported.append(client)
            elif word.startswith("a"):
                numbers = re.findall(r"#(\d+)", word)
                partial[client] = " ".join(str(notes.get(n, "")) for n in numbers).strip() or "partial support"
    return unsupported, partial


def nice_names(root: Path) -> dict[str, str]:
    """``family`` and ``platform`` display names from ``_data/nicenames.yml`` (two-level YAML)."""
    names: dict[str, str] = {}
    section = None
    for line in (root / "_data" / "nicenames.yml").read_text(encoding="utf-8").splitlines():
        if re.match(r"^[a-z]+:\s*$", line):
            section = line.rstrip(": ")
        elif section in ("family", "platform") and (found := re.match(r'^\s+([a-z0-9-]+):\s*"(.*)"', line)):
            names[found[1]] = found[2]
    return names


def main(checkout: str) -> None:
    root = Path(checkout)
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    features = {}
    for path in sorted((root / "_features").glob("*.md")):
        slug = path.stem
        if slug.startswith("_"):
            continue
        feature = front_matter(path.read_text(encoding="utf-8"))
        match = match_of(slug, feature)
        if match is None:
            continue
        unsupported, partial = support(feature)
        if unsupported or partial:
            features[slug] = {"title": feature.get("title", slug), "match": match,
                              "unsupported": unsupported, "partial": partial}
    out = {
        "source": f"caniemail.com, https://github.com/hteumeuleu/caniemail at {commit} (MIT licence, "
                  "Copyright (c) 2019 Rémi Parmentier; see CANIEMAIL-LICENSE)",
        "url": "https://www.caniemail.com/features/",
        "names": nice_names(root),
        "features": features,
    }
    json.dump(out, sys.stdout, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
