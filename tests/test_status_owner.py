"""One owner for a message's state: only ``worker/sending/lifecycle.py`` writes ``messages.status``.

Unit layer: the product source is read with ``ast``. A write is an assignment to ``<message>.status`` (or a
``setattr`` of it, or a value of ``MessageStatus`` assigned to any ``.status``), a ``.values(status=...)`` /
``.values({"status": ...})`` on an ``update()`` of the messages table, or SQL text that updates
``messages ... SET ... status``. Creating a message (the INSERT of ``enqueue``) is not a write of its status.
Migrations are not product code and are not scanned. The behaviour of the roll-up itself (on MariaDB and SQLite)
is covered by ``tests/worker/tracking/test_events.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "webhook_app", "console_app")
OWNER = Path("worker/sending/lifecycle.py")
_SQL = re.compile(r"\bUPDATE\s+messages\b.*\bSET\b.*\bstatus\s*=", re.I | re.S)
_MESSAGES_TABLE = re.compile(r"\bupdate\(\s*(Message\b|messages\b|Message\.__table__)")


def _is_message_status_target(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "status"
            and re.search(r"message|msg|^m$", ast.unparse(node.value), re.I) is not None)


def status_writes(source: str, filename: str = "<source>") -> list[str]:
    """Each place in ``source`` that writes a message's status, as ``file:line: code``."""
    found: list[str] = []

    def hit(node: ast.AST) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {ast.unparse(node)[:120]}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = ast.unparse(node.value) if node.value is not None else ""
            for target in targets:
                if _is_message_status_target(target) or (
                        isinstance(target, ast.Attribute) and target.attr == "status" and "MessageStatus" in value):
                    hit(node)
        elif isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value == "status"
                    and re.search(r"message|msg", ast.unparse(node.args[0]), re.I)):
                hit(node)
            if isinstance(func, ast.Attribute) and func.attr == "values" and _MESSAGES_TABLE.search(
                    ast.unparse(func.value)):
                keys = {k.arg for k in node.keywords} | {
                    k.value for arg in node.args if isinstance(arg, ast.Dict)
                    for k in arg.keys if isinstance(k, ast.Constant)}
                if "status" in keys:
                    hit(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
            hit(node)
    return found


def test_the_scanner_finds_each_kind_of_status_write() -> None:
    planted = '''
message.status = new
msg.status = MessageStatus.SENT
row.status = MessageStatus.DELIVERED
setattr(message, "status", MessageStatus.SENT)
conn.execute(update(Message).where(Message.id == tid).values(status=MessageStatus.SENT))
conn.execute(update(messages).where(messages.c.id == tid).values({"status": MessageStatus.SENT}))
conn.execute(text("UPDATE messages SET status = 'sent' WHERE id = :id"))
'''
    assert len(status_writes(planted)) == 7
    innocent = '''
recipient.status = RecipientStatus.SENT
r.status = status
conn.execute(update(Message).where(Message.id == tid).values(reconciled_at=now))
conn.execute(update(recipients).values(status=RecipientStatus.SENT))
conn.execute(insert(messages).values(status=MessageStatus.QUEUED))
'''
    assert status_writes(innocent) == []


def test_only_the_lifecycle_writes_a_message_status() -> None:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "devtools" not in p.parts and p.relative_to(ROOT) != OWNER]
    assert len(files) > 50
    writes = [w for p in files for w in status_writes(p.read_text(), str(p.relative_to(ROOT)))]
    assert writes == [], "a message's status is written outside worker/sending/lifecycle.py:\n" + "\n".join(writes)
    assert status_writes((ROOT / OWNER).read_text(), str(OWNER)), "the scanner no longer sees the lifecycle's writes"
