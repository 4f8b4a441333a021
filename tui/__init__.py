"""`localspec chat`: a Textual terminal app for chatting with a local model."""

from tui.app import ChatApp, ChatOptions

__all__ = ["ChatApp", "ChatOptions"]
