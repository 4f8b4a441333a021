"""The chat's actions in Textual's command palette (themes come from Textual's own provider)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, app action)
ACTIONS = [
    ("New conversation", "Start an empty conversation", "new_conversation"),
    ("Regenerate answer", "Answer the last prompt again", "regenerate"),
    ("Edit last prompt", "Take back the last exchange and edit the prompt", "edit_last"),
    ("Copy last code block", "Copy the most recent code block to the clipboard", "copy_code"),
    ("Export conversation", "Write the conversation to a Markdown file", "export"),
    ("Rename conversation", "Give the current conversation a new title", "rename_current"),
    ("Delete conversation", "Delete the current conversation", "delete_current"),
    ("Conversation settings", "System prompt, sampling and drafter", "settings"),
    ("Choose model", "Load another GGUF model", "pick_model"),
    ("Toggle sidebar", "Show or hide the conversation list", "toggle_sidebar"),
    ("Toggle speculation details", "Sparkline of tokens per verify step", "toggle_details"),
    ("Keys", "Show every key binding", "help"),
]


class ChatCommands(Provider):
    async def discover(self) -> Hits:
        for title, help_text, action in ACTIONS:
            yield DiscoveryHit(title, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in ACTIONS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self.app.run_action, action),
                          help=help_text)
