"""The HTML compatibility check and a message's links (tlsmta.devrelay._checks_html), no reactor."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from tlsmta.devrelay._checks_html import Link, caniemail, html_problems, links_of


def _features(html: str) -> dict[str, dict]:
    return {p["feature"]: p for p in html_problems(html)}


def test_shipped_data_set_names_its_source_and_licence() -> None:
    """The derived caniemail data ships with the MIT notice it requires."""
    data = caniemail()
    assert "github.com/hteumeuleu/caniemail" in data["source"] and "MIT" in data["source"]
    notice = resources.files("tlsmta.devrelay").joinpath("data", "CANIEMAIL-LICENSE").read_text("utf-8")
    assert "MIT License" in notice and "Rémi Parmentier" in notice
    assert len(data["features"]) > 150


def test_unsupported_elements_name_the_clients() -> None:
    """<video> is reported with the clients that drop it, with caniemail's names and a link to the feature."""
    problem = _features("<p>hi</p><video src='a.mp4'></video>")["html-video"]
    assert problem["found"] == ["video"] and problem["count"] == 1
    assert "Gmail (Desktop Webmail)" in problem["unsupported"]
    assert problem["url"] == "https://www.caniemail.com/features/html-video/"
    assert "html-video" not in _features("<p>hi</p>")


def test_css_in_style_elements_and_attributes() -> None:
    """display:flex in a style attribute, @media and :hover in a <style> sheet, units and functions."""
    found = _features("""<style>@media (max-width: 600px) { a:hover { color: red } }</style>
        <div style="display: flex; width: calc(100% - 2rem)">x</div>""")
    assert {"css-display-flex", "css-at-media", "css-pseudo-class-hover", "css-unit-calc", "css-unit-rem"} <= set(found)
    outlook = "Outlook (Windows)"
    assert outlook in found["css-display-flex"]["unsupported"]
    assert "css-display-grid" not in found


def test_partial_support_carries_caniemail_note() -> None:
    """A feature only partly supported lists the client with caniemail's note."""
    problem = _features('<p style="margin: 0 auto">x</p>')["css-margin"]
    assert problem["unsupported"] == []
    assert problem["partial"] and all(entry["note"] for entry in problem["partial"])


def test_element_types_and_attributes() -> None:
    """<input type=checkbox>, a <button> (default type submit) and the srcset attribute."""
    found = _features('<form><input type="CheckBox"><button>Go</button></form><img src="a.png" srcset="a2.png 2x">')
    assert {"html-form", "html-input-checkbox", "html-button-submit", "html-srcset"} <= set(found)
    assert "html-input-radio" not in found


def test_most_unsupported_first() -> None:
    """The list is ordered by how many clients do not support the feature."""
    problems = html_problems('<video></video><p style="display:flex">x</p>')
    counts = [len(p["unsupported"]) for p in problems]
    assert counts == sorted(counts, reverse=True)


def test_links_and_images_in_order_once() -> None:
    """<a href>, <img src> and background= from the HTML, then URLs written in the text body, each once."""
    html = '<a href=" https://example.org/a ">a</a><img src="cid:logo"><td background="https://cdn.example/b.png"></td>' \
           '<a href="https://example.org/a">again</a>'
    text = "Confirm at https://example.org/confirm?t=1. Or (https://example.org/b)."
    assert links_of(html, text) == [
        Link("https://example.org/a", "link"),
        Link("cid:logo", "image"),
        Link("https://cdn.example/b.png", "image"),
        Link("https://example.org/confirm?t=1", "text"),
        Link("https://example.org/b", "text"),
    ]
    assert links_of(None, None) == []


def test_data_set_is_the_derivation_of_its_source_format(tmp_path) -> None:
    """tools/derive_caniemail.py reads caniemail's front matter (bare keys, trailing commas, tabs)
    and keeps the latest version's answer per client."""
    import subprocess
    import sys

    features = tmp_path / "_features"
    features.mkdir()
    (tmp_path / "_data").mkdir()
    (tmp_path / "_data" / "nicenames.yml").write_text('family:\n  gmail: "Gmail"\nplatform:\n  ios: "iOS"\n')
    (features / "html-video.md").write_text(
        '---\ntitle: "<video> element"\ncategory: html\nstats: {\n\tgmail: {\n\t\tios: {\n'
        '\t\t\t"2019-01": "y",\n\t\t\t"2024-01": "n",\n\t\t},\n\t\tandroid: {\n\t\t\t"2024-01": "a #1"\n\t\t}\n\t}\n}\n'
        'notes_by_num: {\n    "1": "Only with a poster."\n}\n---\n'
    )
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    derived = subprocess.run([sys.executable, "tools/derive_caniemail.py", str(tmp_path)], check=True,
                             capture_output=True, text=True).stdout
    feature = json.loads(derived)["features"]["html-video"]
    assert feature["match"] == {"kind": "elements", "names": ["video"]}
    assert feature["unsupported"] == ["gmail.ios"]
    assert feature["partial"] == {"gmail.android": "Only with a poster."}


def test_which_links_the_link_check_may_request() -> None:
    """Only http(s) URLs on listed hosts (case and a final dot ignored); nothing with an empty list."""
    from tlsmta.devrelay._checks import not_checkable

    assert not_checkable("https://Staging.Example.com./x", ["staging.example.com"]) is None
    assert not_checkable("https://staging.example.com/x", []) == "host not in [http] link_check_hosts"
    assert not_checkable("mailto:bob@example.org", ["example.org"]) == "not an http(s) URL"
    assert not_checkable("http://example.org:http/", ["example.org"]) == "not a valid URL"


@pytest.mark.parametrize("url", [
    "http://internal.test\u00e9@staging.example.com/",  # sent as http://internal.test?@...: Agent asks internal.test
    "http://internal.test\t@staging.example.com/",  # Agent drops the tab: user@host as the host
    "http://internal.test\\@staging.example.com/",
    "http://user:pw@staging.example.com/",
])
def test_the_link_check_never_requests_a_url_agent_could_read_as_another_host(url: str) -> None:
    """The allowed host is what urlsplit reads; a URL Twisted's Agent would send elsewhere is skipped."""
    from tlsmta.devrelay._checks import not_checkable

    assert not_checkable(url, ["staging.example.com"]) is not None


def test_one_link_check_requests_at_most_max_checked_links() -> None:
    """A mail with thousands of allowed links makes one click request the first MAX_CHECKED_LINKS only."""
    from tlsmta.devrelay._checks import MAX_CHECKED_LINKS, link_entries

    links = [Link(f"https://staging.example.com/{i}", "link") for i in range(MAX_CHECKED_LINKS + 5)]
    entries = link_entries([Link("mailto:x@example.com", "link"), *links], ["staging.example.com"])
    assert sum(entry["skipped"] is None for entry in entries) == MAX_CHECKED_LINKS
    assert entries[-1]["skipped"] == f"only the first {MAX_CHECKED_LINKS} checkable links are requested"
    assert entries[0]["skipped"] == "not an http(s) URL"
