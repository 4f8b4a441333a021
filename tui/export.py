"""A conversation as a Markdown document."""

from __future__ import annotations

import re
from datetime import datetime

from tui.history import ROLE_TITLES, Conversation, StoredMessage


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48] or "conversation"


def to_markdown(conversation: Conversation, messages: list[StoredMessage], system_prompt: str = "") -> str:
    when = datetime.fromtimestamp(conversation.created).strftime("%Y-%m-%d %H:%M")
    lines = [f"# {conversation.title}", "", f"*Exported from localspec chat; started {when}.*", ""]
    if system_prompt:
        lines += ["## System", "", system_prompt, ""]
    for message in messages:
        lines += [f"## {ROLE_TITLES.get(message.role, message.role)}", "", message.content.rstrip(), ""]
    return "\n".join(lines)
