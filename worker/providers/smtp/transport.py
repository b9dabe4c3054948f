"""Plain SMTP relay transport (the fallback).

Builds a MIME message with :mod:`email` and speaks SMTP with :mod:`smtplib` over STARTTLS or implicit TLS (both
verifying the server certificate), with a timeout on every socket operation. The outcome is reported honestly,
because the delivery core decides from it whether a resend could duplicate the message:

- *accepted*: :class:`SmtpSent`, with the recipients the relay refused (5xx, final) or deferred (4xx, retry
  those recipients only) while it took the message for the others;
- *not sent*: :class:`RecipientsRefused` (no recipient accepted), :class:`RetryableDeliveryError`,
  :class:`PermanentDeliveryError`, or an operator problem (:class:`CredentialsRejected`,
  :class:`ConfigurationError`) that must hold the message rather than fail it;
- *unknown*: :class:`AmbiguousDeliveryError` once the terminating ``<CRLF>.<CRLF>`` was written and no final
  reply came: the relay may have queued the message, and no API can tell us.

The message is built completely (:func:`prepare`: MIME and the DATA bytes) before the transport calls
``departing``; a message the ``email`` package refuses is reported as not sent, for good, and never connects.

That last distinction is why the transaction is driven step by step (MAIL, RCPT per recipient, DATA, content,
reply) instead of ``smtplib.SMTP.send_message``, which raises the same exception for a drop before and after the
final dot. :func:`_transmit` is the one place that boundary is decided.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from io import BytesIO

from worker.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    CredentialsRejected,
    DeliveryError,
    PermanentDeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.infrastructure.config import Settings
from worker.providers.base import (
    TRACKING_HEADER,
    Accepted,
    Outcome,
    OutgoingEmail,
    held,
    outcome_of,
    unbuildable,
)

PROVIDER = "smtp"


@dataclass(frozen=True)
class SmtpSent:
    """The relay accepted the message for at least one recipient.

    ``refused`` (5xx, final) and ``deferred`` (4xx: greylisting, mailbox full; retry those recipients only)
    map the bare envelope address, spelled as in ``OutgoingEmail.envelope_recipients``, to the relay's reply
    (``"451 4.7.1 greylisted"``). Every other envelope recipient was accepted.
    """

    message_id: str
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)


def build_mime(email_msg: OutgoingEmail) -> EmailMessage:
    if not (email_msg.text_body or email_msg.html_body):
        raise PermanentDeliveryError(
            "the message has only a template_id, which only SMTP2Go can render", provider=PROVIDER
        )
    msg = EmailMessage()
    msg["From"] = email_msg.sender
    if email_msg.to:
        msg["To"] = ", ".join(email_msg.to)
    if email_msg.cc:
        msg["Cc"] = ", ".join(email_msg.cc)
    if email_msg.subject is not None:
        msg["Subject"] = email_msg.subject
    if email_msg.reply_to:
        msg["Reply-To"] = email_msg.reply_to
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    if email_msg.message_id_header:
        msg["Message-ID"] = email_msg.message_id_header
    msg[TRACKING_HEADER] = email_msg.tracking_id
    for name, value in email_msg.headers.items():
        msg[name] = value
    if email_msg.text_body:
        msg.set_content(email_msg.text_body)
        if email_msg.html_body:
            msg.add_alternative(email_msg.html_body, subtype="html")
    else:
        msg.set_content(email_msg.html_body or "", subtype="html")
    for att in email_msg.attachments:
        maintype, _, subtype = att.mimetype.partition("/")
        msg.add_attachment(att.content, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=att.filename)
    return msg


def _bare(address: str) -> str:
    return parseaddr(address)[1] or address


def _envelope_recipients(email_msg: OutgoingEmail) -> list[str]:
    """Bare addresses in order, each once (an address in both To and Cc must not be delivered twice)."""
    seen: set[str] = set()
    out: list[str] = []
    for address in email_msg.envelope_recipients:
        bare = _bare(address)
        if bare.lower() not in seen:
            seen.add(bare.lower())
            out.append(bare)
    return out


def _reply(code: int, raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return f"{code} {text}".strip()


def _not_sent(code: int, text: str) -> RetryableDeliveryError | PermanentDeliveryError:
    """A reply that says the relay did not take the message: 4xx (421 included) retryable, else permanent."""
    cls = RetryableDeliveryError if 400 <= code < 500 else PermanentDeliveryError
    return cls(text, provider=PROVIDER, status_code=code)


def _payload(mime: EmailMessage, international: bool) -> bytes:
    """The DATA content as CPython's ``smtplib.SMTP.data`` sends it: CRLF line ends, leading dots doubled,
    a final CRLF, then the terminating ``.<CRLF>``."""
    buf = BytesIO()
    gen = BytesGenerator(buf, policy=policy.SMTPUTF8) if international else BytesGenerator(buf)
    gen.flatten(mime, linesep="\r\n")
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", buf.getvalue())
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _connect(host: str, port: int, security: str, timeout: float, ca_file: str | None) -> smtplib.SMTP:
    """Connect, greet and (for ``starttls``) upgrade; the caller closes the returned client."""
    context = ssl.create_default_context(cafile=ca_file) if security in {"starttls", "ssl"} else None
    client = (smtplib.SMTP_SSL(host, port, timeout=timeout, context=context) if security == "ssl"
              else smtplib.SMTP(host, port, timeout=timeout))
    try:
        client.ehlo_or_helo_if_needed()
        if security == "starttls":
            try:
                client.starttls(context=context)
            except smtplib.SMTPNotSupportedError as err:
                raise ConfigurationError(
                    f"SMTP relay {host}:{port} does not offer STARTTLS (SMTP_SECURITY=starttls): use the relay's "
                    "STARTTLS port, or SMTP_SECURITY=ssl with its implicit-TLS port") from err
            client.ehlo_or_helo_if_needed()
    except BaseException:
        client.close()
        raise
    return client


def _authenticate(client: smtplib.SMTP, username: str, password: str) -> None:
    """Log in. A 5xx refusal is an operator problem (revoked or wrong credentials): hold the mail, do not fail
    it. The error names neither the password nor anything derived from it."""
    try:
        client.login(username, password)
    except smtplib.SMTPAuthenticationError as err:
        reply = _reply(err.smtp_code, err.smtp_error)
        if 500 <= err.smtp_code < 600:
            raise CredentialsRejected(
                f"SMTP relay refused the credentials of SMTP_USERNAME ({reply}): fix SMTP_USERNAME / SMTP_PASSWORD",
                provider=PROVIDER, status_code=err.smtp_code) from err
        raise RetryableDeliveryError(f"SMTP relay could not check the credentials now ({reply})",
                                     provider=PROVIDER, status_code=err.smtp_code) from err
    except smtplib.SMTPNotSupportedError as err:
        raise ConfigurationError("SMTP relay does not offer AUTH on this connection but SMTP_USERNAME is set "
                                 "(does it offer AUTH only over TLS? check SMTP_SECURITY)") from err
    except smtplib.SMTPException as err:
        if type(err) is not smtplib.SMTPException:  # a reply or a drop: classified by the caller
            raise
        raise ConfigurationError(f"SMTP relay AUTH: {err} (SMTP_USERNAME is set)") from err


def _envelope(client: smtplib.SMTP, sender: str, rcpts: list[str], options: list[str]
              ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """MAIL FROM, then RCPT TO for each recipient: (accepted, refused 5xx, deferred 4xx)."""
    code, resp = client.mail(sender, options)
    if code != 250:
        raise _not_sent(code, f"MAIL FROM refused: {_reply(code, resp)}")
    accepted: list[str] = []
    refused: dict[str, str] = {}
    deferred: dict[str, str] = {}
    for rcpt in rcpts:
        code, resp = client.rcpt(rcpt)
        if code in (250, 251):
            accepted.append(rcpt)
        elif code == 421:  # the relay is closing the connection: nothing was sent, try the whole message later
            raise RetryableDeliveryError(f"relay closing during RCPT: {_reply(code, resp)}", provider=PROVIDER,
                                         status_code=code)
        elif 400 <= code < 500:
            deferred[rcpt] = _reply(code, resp)
        elif 500 <= code < 600:
            refused[rcpt] = _reply(code, resp)
        else:
            raise RetryableDeliveryError(f"unintelligible RCPT reply: {_reply(code, resp)}", provider=PROVIDER)
    return accepted, refused, deferred


def _transmit(client: smtplib.SMTP, payload: bytes) -> str:
    """Write the content and read the final reply: the one place that decides *not sent* versus *unknown*.

    A failure while writing means the terminating ``<CRLF>.<CRLF>`` did not fully leave (``sendall`` raises
    only for bytes it could not hand over), so the relay must discard the partial message: retryable. Once
    the write returned, the relay may have the whole message; a missing or unreadable reply (timeout, dropped
    connection, SSL EOF) is then ambiguous and must not be resent blindly.
    """
    try:
        client.send(payload)
    except (smtplib.SMTPException, OSError) as err:
        raise RetryableDeliveryError(f"connection lost before the end of the message was sent: {err}",
                                     provider=PROVIDER) from err
    # --- the final dot was written: from here on, the relay may have queued the message ---
    try:
        code, resp = client.getreply()
    except (smtplib.SMTPException, OSError) as err:
        raise AmbiguousDeliveryError(
            f"the relay received the message but its answer never came ({type(err).__name__}: {err}); "
            "it may have queued it", provider=PROVIDER) from err
    if 200 <= code < 300:
        return _reply(code, resp)
    if 400 <= code < 600:  # the relay said it did not take it
        raise _not_sent(code, f"relay refused the message after DATA: {_reply(code, resp)}")
    raise AmbiguousDeliveryError(f"unintelligible reply after the message was sent: {_reply(code, resp)}",
                                 provider=PROVIDER)


@dataclass(frozen=True)
class Prepared:
    """A message built for the relay, before anything is sent: envelope and the DATA content."""

    message_id: str
    sender: str
    rcpts: list[str]
    international: bool
    payload: bytes = field(repr=False)


def prepare(email: OutgoingEmail) -> Prepared:
    """Build the MIME message and the exact bytes DATA will carry. Runs before anything leaves the process, so
    an error here (a header value the ``email`` package refuses, text it cannot encode) means nothing was sent
    and sending again cannot help (:class:`SmtpTransport` reports it as ``NotSent(unbuildable=True)``)."""
    mime = build_mime(email)
    rcpts = _envelope_recipients(email)
    if not rcpts:
        raise PermanentDeliveryError("no recipients left to send to", provider=PROVIDER)
    sender = _bare(email.sender)
    international = not "".join([sender, *rcpts]).isascii()
    return Prepared(message_id=str(mime["Message-ID"] or ""), sender=sender, rcpts=rcpts,
                    international=international, payload=_payload(mime, international))


def send(
    *,
    email: OutgoingEmail | Prepared,
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    security: str = "starttls",
    timeout: float = 30.0,
    ca_file: str | None = None,
) -> SmtpSent:
    """Send one message to the relay and report what the relay did with it (see the module docstring).

    ``email`` is built with :func:`prepare` first unless it already was. Returns :class:`SmtpSent` when the
    relay took the message for at least one recipient. Raises :class:`RecipientsRefused` when it accepted none
    (nothing sent; ``refused`` 5xx, ``deferred`` 4xx); :class:`RetryableDeliveryError` for connection problems
    and 4xx replies (before the content, or after it: the relay said no); :class:`PermanentDeliveryError` for 5xx
    to MAIL FROM, DATA or the content; :class:`AmbiguousDeliveryError` when the content was written and no final
    reply came; :class:`CredentialsRejected` for a 5xx to AUTH; :class:`ConfigurationError` for an untrusted
    certificate or a relay that lacks the STARTTLS / AUTH the settings ask for.
    """
    built = email if isinstance(email, Prepared) else prepare(email)
    sender, rcpts, international, payload = built.sender, built.rcpts, built.international, built.payload
    client: smtplib.SMTP | None = None
    try:
        try:
            client = _connect(host, port, security, timeout, ca_file)
            if username:
                _authenticate(client, username, password or "")
            if international and not client.has_extn("smtputf8"):
                raise PermanentDeliveryError("an address needs SMTPUTF8, which the relay does not offer",
                                             provider=PROVIDER)
            options = ["SMTPUTF8", "BODY=8BITMIME"] if international else []
            if client.has_extn("size"):
                options.append(f"SIZE={len(payload)}")
            accepted, refused, deferred = _envelope(client, sender, rcpts, options)
            if not accepted:
                raise RecipientsRefused(
                    f"relay accepted no recipient ({len(refused)} refused, {len(deferred)} deferred)",
                    provider=PROVIDER, refused=refused, deferred=deferred)
            code, resp = client.docmd("DATA")
            if code != 354:
                raise _not_sent(code, f"DATA refused: {_reply(code, resp)}")
        except ssl.SSLCertVerificationError as err:
            raise ConfigurationError(
                f"SMTP relay {host}:{port} certificate is not trusted ({err.verify_message}): set SMTP_CA_FILE "
                "to the CA that signed it") from err
        except smtplib.SMTPResponseException as err:  # greeting, EHLO, STARTTLS replies
            raise _not_sent(err.smtp_code, _reply(err.smtp_code, err.smtp_error)) from err
        except (smtplib.SMTPException, OSError) as err:  # refused, timed out, dropped: nothing was sent
            raise RetryableDeliveryError(f"{type(err).__name__}: {err}", provider=PROVIDER) from err
        _transmit(client, payload)
    except AmbiguousDeliveryError:
        if client is not None:
            client.close()
        raise
    finally:
        if client is not None and client.sock is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    return SmtpSent(message_id=built.message_id, refused=refused, deferred=deferred)


@dataclass(frozen=True)
class SmtpTransport:
    """The SMTP relay as a transport: :func:`send` with the relay's address and credentials, its answer (or
    classified error) as an outcome. Operator problems (refused credentials, an untrusted certificate, missing
    STARTTLS/AUTH) are :class:`Held`."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security: str = "starttls"
    timeout: float = 30.0
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTransport:
        if not settings.smtp_host:
            raise ConfigurationError("no SMTP relay configured (SMTP_HOST)")
        return cls(host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
                   password=settings.smtp_password, security=settings.smtp_security, timeout=settings.smtp_timeout,
                   ca_file=settings.smtp_ca_file)

    def send(self, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome:
        try:
            built = prepare(email)  # before ``departing``: a message that cannot be built was never sent
        except Exception as err:  # noqa: BLE001 - whatever the build raised, nothing left the process
            return unbuildable(PROVIDER, err)
        if departing is not None:
            departing()
        try:
            sent = send(email=built, host=self.host, port=self.port, username=self.username,
                        password=self.password, security=self.security, timeout=self.timeout, ca_file=self.ca_file)
        except DeliveryError as err:
            return outcome_of(err)
        except ConfigurationError as err:
            return held(err)
        return Accepted(sent.message_id, refused=dict(sent.refused), deferred=dict(sent.deferred))

    def send_batch(self, emails: list[OutgoingEmail],
                   departing: Callable[[list[str]], None] | None = None) -> list[Outcome]:
        """Send ``emails`` over one SMTP connection (see :func:`send_batch_outcomes`)."""
        return send_batch_outcomes(self, emails, departing)


# ------------------------------------------------------------------------------------------ a batch


def _one_on_connection(client: smtplib.SMTP, built: Prepared) -> SmtpSent:
    """One message of a batch on an open connection (MAIL, RCPT, DATA, content, reply), classified as
    :func:`send` classifies a message on its own connection; a refusal resets the transaction with RSET."""
    try:
        if built.international and not client.has_extn("smtputf8"):
            raise PermanentDeliveryError("an address needs SMTPUTF8, which the relay does not offer",
                                         provider=PROVIDER)
        options = ["SMTPUTF8", "BODY=8BITMIME"] if built.international else []
        if client.has_extn("size"):
            options.append(f"SIZE={len(built.payload)}")
        accepted, refused, deferred = _envelope(client, built.sender, built.rcpts, options)
        if not accepted:
            client.rset()
            raise RecipientsRefused(
                f"relay accepted no recipient ({len(refused)} refused, {len(deferred)} deferred)",
                provider=PROVIDER, refused=refused, deferred=deferred)
        code, resp = client.docmd("DATA")
        if code != 354:
            client.rset()
            raise _not_sent(code, f"DATA refused: {_reply(code, resp)}")
    except smtplib.SMTPResponseException as err:
        raise _not_sent(err.smtp_code, _reply(err.smtp_code, err.smtp_error)) from err
    except (smtplib.SMTPException, OSError) as err:
        raise RetryableDeliveryError(f"{type(err).__name__}: {err}", provider=PROVIDER) from err
    _transmit(client, built.payload)
    return SmtpSent(message_id=built.message_id, refused=refused, deferred=deferred)


def send_batch_outcomes(transport: SmtpTransport, emails: list[OutgoingEmail],
                        departing: Callable[[list[str]], None] | None = None) -> list[Outcome]:
    """Send ``emails`` over ONE SMTP connection, one transaction each: one outcome per email, in order.

    Every message is built first (one that cannot be built is ``NotSent(unbuildable)`` and never sent);
    ``departing`` gets the tracking ids that may leave, before the connection is opened. A connection that cannot
    be opened (or authenticated) gives every email the same outcome; once it broke, or after an answer that
    may leave the relay's state unknown, the emails not yet tried are not sent (retryable).
    """
    outcomes: list[Outcome | None] = [None] * len(emails)
    ready: list[tuple[int, Prepared]] = []
    for index, email_msg in enumerate(emails):
        try:
            ready.append((index, prepare(email_msg)))
        except Exception as err:  # noqa: BLE001 - whatever the build raised, nothing left the process
            outcomes[index] = unbuildable(PROVIDER, err)
    if ready:
        if departing is not None:
            departing([emails[i].tracking_id for i, _ in ready])
        client: smtplib.SMTP | None = None
        try:
            client = _connect(transport.host, transport.port, transport.security, transport.timeout,
                              transport.ca_file)
            if transport.username:
                _authenticate(client, transport.username, transport.password or "")
        except ssl.SSLCertVerificationError as err:
            problem = held(ConfigurationError(
                f"SMTP relay {transport.host}:{transport.port} certificate is not trusted ({err.verify_message}): "
                "set SMTP_CA_FILE to the CA that signed it"))
            return _fill(outcomes, ready, problem)
        except ConfigurationError as err:
            return _fill(outcomes, ready, held(err))
        except DeliveryError as err:
            return _fill(outcomes, ready, outcome_of(err))
        except smtplib.SMTPResponseException as err:
            return _fill(outcomes, ready, outcome_of(_not_sent(err.smtp_code, _reply(err.smtp_code, err.smtp_error))))
        except (smtplib.SMTPException, OSError) as err:
            return _fill(outcomes, ready, outcome_of(RetryableDeliveryError(f"{type(err).__name__}: {err}",
                                                                            provider=PROVIDER)))
        broken: Outcome | None = None
        try:
            for index, built in ready:
                if broken is not None:
                    outcomes[index] = broken
                    continue
                try:
                    sent = _one_on_connection(client, built)
                except AmbiguousDeliveryError as err:
                    outcomes[index] = outcome_of(err)
                    broken = outcome_of(RetryableDeliveryError("not tried: the relay connection of the batch "
                                                               "broke before this message", provider=PROVIDER))
                except DeliveryError as err:
                    outcomes[index] = outcome_of(err)
                    if not isinstance(err, RecipientsRefused) and err.status_code is None:
                        broken = outcome_of(RetryableDeliveryError(
                            "not tried: the relay connection of the batch broke before this message",
                            provider=PROVIDER))
                else:
                    outcomes[index] = Accepted(sent.message_id, refused=dict(sent.refused),
                                               deferred=dict(sent.deferred))
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    return [o for o in outcomes if o is not None]


def _fill(outcomes: list[Outcome | None], ready: list[tuple[int, Prepared]], outcome: Outcome) -> list[Outcome]:
    for index, _ in ready:
        outcomes[index] = outcome
    return [o for o in outcomes if o is not None]
