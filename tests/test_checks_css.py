"""The small CSS reader behind the HTML compatibility check (tlsmta.devrelay._css), no reactor."""

from __future__ import annotations

from tlsmta.devrelay._css import Declaration, parse_declarations, parse_stylesheet


def test_declarations_keep_property_value_and_important() -> None:
    """A style attribute: lower-cased properties, values as written, !important noted and removed."""
    found = parse_declarations("COLOR: Red; margin:0 auto !IMPORTANT ;; bogus ; font-family: 'a;b', serif")
    assert found == (
        Declaration("color", "Red"),
        Declaration("margin", "0 auto", True),
        Declaration("font-family", "'a;b', serif"),
    )


def test_semicolons_inside_parentheses_do_not_split() -> None:
    """url(data:...;base64,...) is one value."""
    [declaration] = parse_declarations("background: url(data:image/png;base64,AAAA) no-repeat")
    assert declaration.value == "url(data:image/png;base64,AAAA) no-repeat"


def test_functions_and_units_of_a_value() -> None:
    """Functions and units are found in the value, not inside strings or url()."""
    [declaration] = parse_declarations("width: calc(100% - 2rem); ")
    assert declaration.functions == {"calc"}
    assert declaration.units == {"%", "rem"}
    [quoted] = parse_declarations("font-family: 'rgb(1px)'; ")
    assert quoted.functions == frozenset() and quoted.units == frozenset()
    [image] = parse_declarations("background: url(img/10vh.png)")
    assert image.units == frozenset() and image.functions == {"url"}
    [color] = parse_declarations("color: #1e3f00")
    assert color.units == frozenset()  # a hex colour is no number with a unit


def test_stylesheet_rules_at_rules_and_nesting() -> None:
    """Selectors, declarations and at-rules, also inside @media; comments ignored; @import without a block."""
    sheet = parse_stylesheet("""
        @import url("x.css");
        /* p { position: fixed } */
        h1, .a:hover { color: red }
        @media (max-width: 600px) { td::before { content: "}" ; display: block } }
        @font-face { font-family: X; src: url(x.woff) }
    """)
    assert sheet.at_rules == ("import", "media", "font-face")
    assert sheet.selectors == ("h1", ".a:hover", "td::before")
    assert [d.name for d in sheet.declarations] == ["color", "content", "display", "font-family", "src"]
    assert "position" not in {d.name for d in sheet.declarations}


def test_pseudo_classes_and_elements() -> None:
    """:hover is a class, ::marker and the CSS 2 spelling :before are elements; [title=':x'] is neither."""
    sheet = parse_stylesheet("a:hover, li::marker, p:before, a[title=':focus'] { color: red }")
    assert sheet.pseudo_classes == {"hover"}
    assert sheet.pseudo_elements == {"marker", "before"}


def test_broken_css_never_raises() -> None:
    """Unclosed blocks, strings and comments: what can be read is read."""
    sheet = parse_stylesheet("p { color: red; @media { a { b: 'c } /* never closed")
    assert sheet.selectors == ("p",)
    assert parse_declarations("color") == ()


def test_a_long_run_of_digits_is_read_in_linear_time() -> None:
    """A mail's style="width: 1111...1" (300k digits) is read at once; the old pattern split the run every way
    (about half an hour here). A child process with a generous bound: a regression is a timeout, not a hang."""
    import subprocess
    import sys

    code = ("from tlsmta.devrelay._css import Declaration\n"
            "assert Declaration('width', '1' * 300_000 + ' 2px').units == frozenset({'px'})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
