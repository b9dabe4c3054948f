"""Plain SMTP relay transport (the fallback).

Builds a MIME message with :mod:`email` and sends it with :mod:`smtplib` over STARTTLS or implicit TLS, both
verifying the server certificate, with a timeout on every socket operation. SMTP 4xx replies and connection
problems are retryable; 5xx replies are permanent. Recipients the relay refused while it accepted others are
returned so the caller records them per recipient instead of losing them.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate

from worker.errors import (
    PermanentDeliveryError,
    RecipientsRefused,
    RetryableDeliveryError,
)
from worker.providers import TRACKING_HEADER, OutgoingEmail

PROVIDER = "smtp"


@dataclass(frozen=True)
class SmtpSent:
    message_id: str
    refused: dict[str, str] = field(default_factory=dict)  # address -> "550 reason"


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
    from email.utils import parseaddr

    return parseaddr(address)[1] or address


def _classify(code: int, text: str) -> RetryableDeliveryError | PermanentDeliveryError:
    cls = RetryableDeliveryError if 400 <= code < 500 else PermanentDeliveryError
    return cls(text, provider=PROVIDER, status_code=code)


def _reply(code: int, raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return f"{code} {text}".strip()


def send(
    *,
    email: OutgoingEmail,
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    security: str = "starttls",
    timeout: float = 30.0,
    ca_file: str | None = None,
) -> SmtpSent:
    """Send one message to the relay; returns the Message-ID and any recipients refused among accepted ones."""
    mime = build_mime(email)
    rcpts = [_bare(a) for a in email.envelope_recipients]
    if not rcpts:
        raise PermanentDeliveryError("no recipients left to send to", provider=PROVIDER)
    context = ssl.create_default_context(cafile=ca_file) if security in {"starttls", "ssl"} else None
    client: smtplib.SMTP | None = None
    try:
        if security == "ssl":
            client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
        client.ehlo()
        if security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if username:
            client.login(username, password or "")
        refused = client.send_message(mime, from_addr=_bare(email.sender), to_addrs=rcpts)
    except smtplib.SMTPRecipientsRefused as err:
        details = {addr: _reply(code, text) for addr, (code, text) in err.recipients.items()}
        if any(400 <= code < 500 for code, _ in err.recipients.values()):
            raise RetryableDeliveryError("relay refused recipients temporarily", provider=PROVIDER,
                                         status_code=min(c for c, _ in err.recipients.values())) from err
        raise RecipientsRefused("relay refused every recipient", provider=PROVIDER, refused=details) from err
    except smtplib.SMTPAuthenticationError as err:
        raise _classify(err.smtp_code, "relay refused the credentials") from err
    except smtplib.SMTPResponseException as err:
        raise _classify(err.smtp_code, _reply(err.smtp_code, err.smtp_error)) from err
    except ssl.SSLCertVerificationError as err:
        raise RetryableDeliveryError(f"relay certificate not trusted: {err.verify_message}",
                                     provider=PROVIDER) from err
    except (smtplib.SMTPException, OSError) as err:
        raise RetryableDeliveryError(f"{type(err).__name__}: {err}", provider=PROVIDER) from err
    finally:
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    return SmtpSent(
        message_id=str(mime["Message-ID"] or ""),
        refused={addr: _reply(code, text) for addr, (code, text) in refused.items()},
    )
