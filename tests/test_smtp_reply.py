"""The one SMTP reply value and the exception hierarchy that carries it."""

import pytest

from tlsmta import errors
from tlsmta.smtp._commands import Reject
from tlsmta.smtp._data import BARE_LF
from tlsmta.smtp._reply import Reply, SMTPError
from tlsmta.storage._interfaces import StoreError
from tlsmta.tls._policy import TLSFailure


@pytest.mark.parametrize(
    "reply, code, enhanced, detail, text",
    [
        (Reply.of(250, "2.1.0", "Ok"), 250, "2.1.0", "Ok", "2.1.0 Ok"),
        (Reply.of(220, None, "mx ESMTP"), 220, None, "mx ESMTP", "mx ESMTP"),
        (Reply(550, ("5.1.1 no such", "5.1.1 user")), 550, "5.1.1", "no such 5.1.1 user", "5.1.1 no such 5.1.1 user"),
        (Reply(250, ("2.0.0Ok",)), 250, None, "2.0.0Ok", "2.0.0Ok"),
        (Reply(421, ()), 421, None, "", ""),
    ],
)
def test_reply_parts(reply, code, enhanced, detail, text):
    assert (reply.code, reply.enhanced, reply.detail, reply.text) == (code, enhanced, detail, text)


@pytest.mark.parametrize("line", ["550 5.1.1 no such user", "250 2.0.0 Ok: queued as X", "220 mx ESMTP"])
def test_str_and_parse_are_inverse(line):
    assert str(Reply.parse(line)) == line


def test_parse_of_text_without_code_is_a_local_deferral():
    assert Reply.parse("connection refused") == Reply(451, ("connection refused",))


def test_wire_form_of_a_multiline_reply():
    assert Reply.of(250, None, ["mx", "PIPELINING"]).wire() == b"250-mx\r\n250 PIPELINING\r\n"
    assert Reply.of(550, "5.7.1", ["a", "b"]).wire() == b"550-5.7.1 a\r\n550 5.7.1 b\r\n"


@pytest.mark.parametrize(
    "reply, transient",
    [(Reply.of(550, "5.1.1", "no"), Reply.of(451, "4.1.1", "no")), (Reply(554, ("go away",)), Reply.of(451, "4.0.0", "go away")),
     (Reply.of(421, "4.4.2", "bye"), Reply.of(421, "4.4.2", "bye"))],
)
def test_as_transient_keeps_the_detail(reply, transient):
    assert reply.as_transient() == transient


@pytest.mark.parametrize(
    "error, reply",
    [
        (Reject(503, "5.5.1 Error: need MAIL command"), Reply(503, ("5.5.1 Error: need MAIL command",))),
        (StoreError(452, "4.3.1", "insufficient system storage"), Reply.of(452, "4.3.1", "insufficient system storage")),
    ],
)
def test_errors_that_answer_carry_a_reply(error, reply):
    assert isinstance(error, SMTPError) and isinstance(error, errors.TlsmtaError)
    assert error.reply == reply and (error.code, error.text) == (reply.code, reply.text)


def test_values_that_answer_carry_a_reply_the_same_way():
    assert BARE_LF.reply == Reply.of(550, "5.5.2", BARE_LF.text)
    assert TLSFailure("4.7.5", "certificate expired").reply == Reply.of(451, "4.7.5", "certificate expired")
    assert TLSFailure("5.7.10", "REQUIRETLS").reply.code == 550


def test_every_error_class_is_ours():
    """Every exception class tlsmta defines derives from TlsmtaError."""
    import importlib
    import inspect
    import pkgutil

    import tlsmta

    strays = []
    for info in pkgutil.walk_packages(tlsmta.__path__, "tlsmta."):
        if info.name in ("tlsmta.pytest_plugin",):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                if not issubclass(obj, errors.TlsmtaError):
                    strays.append(f"{info.name}.{name}")
    assert strays == []
