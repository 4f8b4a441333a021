"""Reusable widgets of the chat app."""
