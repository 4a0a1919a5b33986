"""Unit tests for :mod:`tlsmta.smtp._commands`: command-line parsing, sans I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmta.smtp._commands import (
    COMMAND_LINE_LIMIT,
    MAX_PATH_LENGTH,
    PARAMETER_ALLOWANCE,
    MailParams,
    Path,
    Reject,
    greeting_name,
    line_limit,
    mail_params,
    parse_params,
    parse_path,
    rcpt_params,
    split_command,
)


def rejected(fn, *args, **kwargs) -> Reject:
    with pytest.raises(Reject) as info:
        fn(*args, **kwargs)
    return info.value


def mail(arg: bytes, **kwargs) -> Path:
    return parse_path(arg, "FROM", allow_null=True, **kwargs)


def rcpt(arg: bytes, **kwargs) -> Path:
    return parse_path(arg, "TO", **kwargs)


# -- split_command ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, verb, arg",
    [
        (b"MAIL FROM:<a@b>", "MAIL", b"FROM:<a@b>"),
        (b"mail FROM:<a@b>", "MAIL", b"FROM:<a@b>"),
        (b"eHlO client.example", "EHLO", b"client.example"),
        (b"MAIL   FROM:<a@b>   ", "MAIL", b"FROM:<a@b>"),
        (b"  NOOP  ", "NOOP", b""),
        (b"QUIT", "QUIT", b""),
        (b"DATA\r\n", "DATA", b""),
        (b"RCPT TO:<a@b> X=1", "RCPT", b"TO:<a@b> X=1"),
    ],
)
def test_split_command(line, verb, arg):
    """The verb is upper-cased and separated from its argument; surrounding spaces go."""
    assert split_command(line) == (verb, arg)


@pytest.mark.parametrize("line", [b"M@IL FROM:<a@b>", b"EHLO1 x", b"\xc3\x89HLO x", b"", b"   ", b"NO-OP", b"\x00DATA", b"12 34"])
def test_split_command_non_alpha_verb_is_unknown(line):
    """A verb that is not plain ASCII letters (or no verb) comes back as the unknown verb ``""``."""
    assert split_command(line)[0] == ""


@given(st.binary(max_size=60))
def test_split_command_total(line):
    """For any input, the verb is empty or upper-case ASCII letters, and the argument has no edge spaces."""
    verb, arg = split_command(line)
    assert verb == "" or (verb.isascii() and verb.isalpha() and verb.isupper())
    assert arg == arg.strip()


# -- parse_path: MAIL ----------------------------------------------------------------------


def test_mail_simple():
    """``FROM:<a@b>`` gives the address and no parameters."""
    assert mail(b"FROM:<user@example.com>") == Path("user@example.com", {})


def test_mail_keyword_case_insensitive():
    """The FROM keyword is case-insensitive."""
    assert mail(b"from:<user@example.com>").address == "user@example.com"


@pytest.mark.parametrize("arg", [b"FROM: <a@example.com>", b"FROM:  <a@example.com>"])
def test_mail_space_after_colon_tolerated(arg):
    """Spaces after the colon (a common client fault) are tolerated."""
    assert mail(arg).address == "a@example.com"


def test_null_sender_allowed_for_mail():
    """The null reverse-path ``<>`` is allowed for MAIL (bounces)."""
    path = mail(b"FROM:<>")
    assert path.address == "" and path.domain == ""


def test_null_path_rejected_for_rcpt():
    """``<>`` is not a forward-path: RCPT rejects it with 501 5.1.3."""
    r = rejected(rcpt, b"TO:<>")
    assert r.code == 501 and r.text.startswith("5.1.3")


def test_null_sender_needs_allow_null():
    """Without ``allow_null`` an empty path is refused even for FROM."""
    r = rejected(parse_path, b"FROM:<>", "FROM")
    assert r.code == 501 and r.text.startswith("5.1.")


def test_mail_with_params():
    """Parameters after the path are parsed, keys upper-cased."""
    path = mail(b"FROM:<a@example.com> size=1000 BODY=8BITMIME")
    assert path.params == {"SIZE": "1000", "BODY": "8BITMIME"}


@pytest.mark.parametrize(
    "arg, address",
    [
        (b"FROM:<@relay.example:user@example.com>", "user@example.com"),
        (b"FROM:<@a.example,@b.example:user@example.com>", "user@example.com"),
    ],
)
def test_source_route_stripped(arg, address):
    """A source route is accepted and ignored (RFC 5321 4.1.1.3)."""
    assert mail(arg).address == address


@pytest.mark.parametrize(
    "addr",
    [
        b'"john doe"@example.com',
        b'"a\\"b"@example.com',
        b'"@"@example.com',
        b"user+tag@example.com",
        b"first.last@sub.example.com",
        b"user@example.com.",
        b"user@[192.0.2.1]",
        b"user@[IPv6:::1]",
        b"user@[IPv6:2001:db8::1]",
        b"o'brien@example.com",
    ],
)
def test_valid_addresses(addr):
    """Quoted local parts, address literals and the usual atext forms are accepted as given."""
    assert mail(b"FROM:<" + addr + b">").address == addr.decode()
    assert rcpt(b"TO:<" + addr + b">").address == addr.decode()


def test_domain_property_lowercases():
    """``Path.domain`` is the lower-cased part after the last ``@``."""
    assert rcpt(b"TO:<User@Example.COM>").domain == "example.com"
    assert rcpt(b'TO:<"a@b"@Example.org>').domain == "example.org"
    assert rcpt(b"TO:<a@[192.0.2.1]>").domain == "[192.0.2.1]"


@pytest.mark.parametrize("arg", [b"TO:<postmaster>", b"TO:<Postmaster>", b"TO:<POSTMASTER>"])
def test_postmaster_alone_in_rcpt(arg):
    """RCPT TO:<postmaster> (any case, no domain) is accepted and normalised (RFC 5321 4.5.1)."""
    assert rcpt(arg).address == "postmaster"


def test_postmaster_alone_not_a_sender():
    """A bare ``postmaster`` is not a valid reverse-path: MAIL rejects it with 501 5.1.7."""
    r = rejected(mail, b"FROM:<postmaster>")
    assert r.code == 501 and r.text.startswith("5.1.7")


@pytest.mark.parametrize(
    "arg",
    [
        b"FROM:a@example.com",  # no angle brackets
        b"FROM:<a@example.com",  # not closed
        b"FROM <a@example.com>",  # no colon
        b"TO:<a@example.com>",  # wrong keyword
        b"FROM:<a@example.com>SIZE=1",  # no space before params
        b"",
        b"FROM:",
    ],
)
def test_mail_syntax_errors(arg):
    """A malformed MAIL argument is 501 5.5.4 with the MAIL syntax hint."""
    r = rejected(mail, arg)
    assert r.code == 501
    assert r.text.startswith("5.5.4") and "MAIL FROM" in r.text


def test_rcpt_syntax_error_names_rcpt():
    """A malformed RCPT argument is 501 5.5.4 with the RCPT syntax hint."""
    r = rejected(rcpt, b"TO a@b")
    assert r.code == 501 and r.text.startswith("5.5.4") and "RCPT TO" in r.text


@pytest.mark.parametrize(
    "addr",
    [b"a@@example.com", b"a", b"@example.com", b"a@", b"a..b@example.com", b".a@example.com", b"a b@example.com",
     b"a@-example.com", b"a@exa_mple.com", b"a@[]", b'"unterminated@example.com', b"a@example..com"],
)
def test_bad_address_syntax(addr):
    """A bad mailbox is 501 with 5.1.7 (sender) or 5.1.3 (recipient)."""
    r = rejected(mail, b"FROM:<" + addr + b">")
    assert (r.code, r.text[:5]) == (501, "5.1.7")
    r = rejected(rcpt, b"TO:<" + addr + b">")
    assert (r.code, r.text[:5]) == (501, "5.1.3")


def test_non_ascii_without_smtputf8():
    """A non-ASCII address without SMTPUTF8 is 553 5.6.7 (RFC 6531 3.6)."""
    r = rejected(mail, "FROM:<jøran@example.com>".encode())
    assert r.code == 553 and r.text.startswith("5.6.7")
    r = rejected(rcpt, "TO:<user@bücher.example>".encode())
    assert r.code == 553 and r.text.startswith("5.6.7")


def test_utf8_address_with_smtputf8_param():
    """With the SMTPUTF8 MAIL parameter a UTF-8 sender is accepted, and RCPT may then be UTF-8."""
    path = mail("FROM:<jøran@bücher.example> SMTPUTF8".encode())
    assert path.address == "jøran@bücher.example"
    assert path.params == {"SMTPUTF8": None}
    assert rcpt("TO:<用户@例子.广告>".encode(), utf8=True).address == "用户@例子.广告"


def test_invalid_utf8_with_smtputf8():
    """Bytes that are not UTF-8 are 553 5.6.7 even under SMTPUTF8."""
    r = rejected(mail, b"FROM:<\xff\xfe@example.com> SMTPUTF8")
    assert r.code == 553 and r.text.startswith("5.6.7")


def test_utf8_still_forbids_specials():
    """SMTPUTF8 allows non-ASCII, not spaces or controls."""
    r = rejected(rcpt, "TO:<a ø@example.com>".encode(), utf8=True)
    assert r.code == 501


def test_path_length_limit():
    """An address of MAX_PATH_LENGTH octets is accepted; one more is 501 5.1.3 'too long'."""
    domain = b"@example.com"
    ok = b"a" * (MAX_PATH_LENGTH - len(domain)) + domain
    assert len(ok) == MAX_PATH_LENGTH
    assert rcpt(b"TO:<" + ok + b">").address == ok.decode()
    r = rejected(rcpt, b"TO:<a" + ok + b">")
    assert r.code == 501 and r.text.startswith("5.1.3") and "too long" in r.text
    r = rejected(mail, b"FROM:<a" + ok + b">")
    assert r.code == 501 and "too long" in r.text


@given(st.binary(max_size=80), st.sampled_from(["FROM", "TO"]), st.booleans(), st.booleans())
@settings(max_examples=500)
def test_parse_path_raises_only_reject(arg, keyword, utf8, allow_null):
    """Whatever a client sends, parse_path returns a Path or raises Reject with a 5xx, nothing else."""
    try:
        path = parse_path(arg, keyword, utf8=utf8, allow_null=allow_null)
    except Reject as r:
        assert 500 <= r.code < 600
    else:
        assert isinstance(path, Path)


@given(st.text(min_size=1, max_size=30), st.sampled_from(["FROM", "TO"]))
def test_parse_path_with_prefix_garbage(addr, keyword):
    """Random text inside the brackets never escapes as a non-Reject exception."""
    try:
        parse_path(f"{keyword}:<{addr}>".encode(), keyword, utf8=True, allow_null=True)
    except Reject:
        pass


# -- parse_params ------------------------------------------------------------------------


def test_parse_params():
    """KEY=VALUE and bare KEY parameters; keys upper-cased, values kept as sent."""
    assert parse_params(b" size=10 Body=8bitmime  SMTPUTF8 ") == {"SIZE": "10", "BODY": "8bitmime", "SMTPUTF8": None}
    assert parse_params(b"") == {}
    assert parse_params(b"X-KEY=a=b") == {"X-KEY": "a=b"}
    assert parse_params(b"EMPTY=") == {"EMPTY": ""}


@pytest.mark.parametrize("raw", [b"=x", b"-X=1", b"A_B=1", b"K\xc3\xa9=1", b"SIZE=\xff"])
def test_parse_params_bad(raw):
    """A malformed parameter keyword or a non-UTF-8 value is 501 5.5.4."""
    r = rejected(parse_params, raw)
    assert r.code == 501 and r.text.startswith("5.5.4")


# -- mail_params --------------------------------------------------------------------------


def test_mail_params_defaults():
    """No parameters: no declared size, 7BIT body, no SMTPUTF8."""
    assert mail_params({}, 100) == MailParams(None, "7BIT", False)


def test_size_number():
    """SIZE=n is the declared size; exactly the limit is accepted."""
    assert mail_params({"SIZE": "100"}, 100).size == 100
    assert mail_params({"SIZE": "0"}, 100).size == 0


def test_size_over_limit():
    """SIZE over the listener's limit is 552 5.3.4 naming the limit (RFC 1870)."""
    r = rejected(mail_params, {"SIZE": "101"}, 100)
    assert r.code == 552 and r.text.startswith("5.3.4") and "100" in r.text


@pytest.mark.parametrize("value", [None, "", "ten", "-1", "1e3", "1" * 21, " 1", "\u00b2", "\u0663", "\uff11"])
def test_size_not_a_number(value):
    """SIZE without a plain ASCII decimal number is 501 5.5.4 (never an unexpected exception)."""
    r = rejected(mail_params, {"SIZE": value}, 10**30)
    assert r.code == 501 and r.text.startswith("5.5.4")


@pytest.mark.parametrize("value, body", [("7BIT", "7BIT"), ("8BITMIME", "8BITMIME"), ("8bitmime", "8BITMIME"), ("7bit", "7BIT")])
def test_body_values(value, body):
    """BODY=7BIT and BODY=8BITMIME (any case) are accepted (RFC 6152)."""
    assert mail_params({"BODY": value}, 100).body == body


@pytest.mark.parametrize("value", ["BINARYMIME", None, "", "8BIT"])
def test_body_unsupported(value):
    """BODY=BINARYMIME (CHUNKING is not offered) or a missing/odd value is 501."""
    r = rejected(mail_params, {"BODY": value}, 100)
    assert r.code == 501 and r.text.startswith("5.5.4")


def test_smtputf8_flag():
    """SMTPUTF8 without a value turns on the SMTPUTF8 transaction."""
    assert mail_params({"SMTPUTF8": None}, 100).smtputf8 is True


def test_smtputf8_with_value():
    """SMTPUTF8 takes no value: 501."""
    r = rejected(mail_params, {"SMTPUTF8": "yes"}, 100)
    assert r.code == 501


def test_requiretls_inside_tls():
    """REQUIRETLS (no value) inside TLS marks the transaction (RFC 8689 2); default is off."""
    assert mail_params({"REQUIRETLS": None}, 100, tls_active=True).requiretls is True
    assert mail_params({}, 100, tls_active=True).requiretls is False
    path = mail(b"FROM:<a@example.com> REQUIRETLS SIZE=5")
    assert mail_params(path.params, 100, tls_active=True) == MailParams(5, requiretls=True)


def test_requiretls_outside_tls_is_530():
    """REQUIRETLS on a session without TLS is 530 5.7.10 (it is not offered there)."""
    r = rejected(mail_params, {"REQUIRETLS": None}, 100)
    assert r.code == 530 and r.text.startswith("5.7.10") and "STARTTLS" in r.text


def test_requiretls_with_value():
    """REQUIRETLS takes no value: 501 5.5.4, inside TLS or not."""
    for tls in (True, False):
        r = rejected(mail_params, {"REQUIRETLS": "yes"}, 100, tls_active=tls)
        assert r.code == 501 and r.text.startswith("5.5.4")


@pytest.mark.parametrize("key", ["RET", "ENVID", "AUTH", "X-FOO", "BY"])
def test_unknown_mail_param(key):
    """A MAIL parameter we do not implement is 555 naming it (RFC 5321 4.1.1.11)."""
    r = rejected(mail_params, {key: "x"}, 100)
    assert r.code == 555 and key in r.text


def test_mail_params_from_a_parsed_line():
    """The parsed path's parameters feed mail_params end to end."""
    path = mail(b"FROM:<a@example.com> SIZE=42 BODY=8BITMIME SMTPUTF8")
    assert mail_params(path.params, 1000) == MailParams(42, "8BITMIME", True)


@given(st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=25)), st.integers(0, 10**12))
@settings(max_examples=300)
def test_mail_params_raises_only_reject(params, limit):
    """Any parameter set gives MailParams or a Reject, never another exception."""
    try:
        result = mail_params(params, limit)
    except Reject as r:
        assert r.code in (501, 530, 552, 555)
    else:
        assert result.size is None or 0 <= result.size <= limit


@given(st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]) | st.sampled_from("0123456789"), max_size=8))
def test_size_digits_of_any_script(value):
    """SIZE accepts exactly the ASCII decimal numbers; digits of other scripts are 501, never a crash."""
    try:
        size = mail_params({"SIZE": value}, 10**30).size
    except Reject as r:
        assert r.code == 501
        assert not (value.isascii() and value.isdigit())
    else:
        assert value.isascii() and size == int(value)


# -- rcpt_params --------------------------------------------------------------------------


def test_rcpt_params_none_ok():
    """No RCPT parameters is fine."""
    assert rcpt_params({}) is None


@pytest.mark.parametrize("params", [{"NOTIFY": "NEVER"}, {"ORCPT": "rfc822;a@b"}, {"X": None}])
def test_rcpt_params_any_rejected(params):
    """Any RCPT parameter is 555 (DSN is not advertised), naming the parameter."""
    r = rejected(rcpt_params, params)
    assert r.code == 555 and next(iter(params)) in r.text


# -- line_limit ----------------------------------------------------------------------------


@pytest.mark.parametrize("verb", [b"MAIL", b"RCPT", b"mail", b"Rcpt"])
def test_line_limit_mail_rcpt(verb):
    """MAIL and RCPT lines may carry extension parameters beyond 512 octets."""
    assert line_limit(verb) == COMMAND_LINE_LIMIT + PARAMETER_ALLOWANCE


@pytest.mark.parametrize("verb", [b"EHLO", b"DATA", b"NOOP", b"", b"MAI", b"XXXX"])
def test_line_limit_others(verb):
    """Every other command line is limited to 512 octets including CRLF (RFC 5321 4.5.3.1.4)."""
    assert line_limit(verb) == COMMAND_LINE_LIMIT == 512


@pytest.mark.parametrize("arg", [b"evil\x1b]0;x\x07", b"a\x00b", b"a\tb", b"ok.test \x1b[2J", b"a\x7f", b"a\xc2\x9b2J", b"a\rb"])
def test_greeting_with_control_characters_is_501(arg):
    """HELO/EHLO arguments with C0/C1 controls or DEL are refused (they would reach logs and terminals)."""
    with pytest.raises(Reject) as raised:
        greeting_name(arg, "EHLO")
    assert raised.value.code == 501 and raised.value.text.startswith("5.5.2 ")


@pytest.mark.parametrize("arg, name", [(b"client.test", "client.test"), (b"[192.0.2.1] extra", "[192.0.2.1]"),
                                       ("bücher.example".encode(), "bücher.example")])
def test_greeting_name(arg, name):
    assert greeting_name(arg, "HELO") == name
