"""Modal screens of the chat app, each returning a typed result."""
