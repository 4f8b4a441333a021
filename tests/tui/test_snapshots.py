"""SVG snapshots of the main screen, the settings modal and the help screen.

Deterministic: a stored conversation (no live generation), fixed memory numbers, fixed size.
Update with `pytest tests/tui/test_snapshots.py --snapshot-update` after checking the new look.
"""

from __future__ import annotations

from tests.tui.conftest import ready
from tui.history import History

SIZE = (120, 36)
ANSWER = """Here is a function that adds two numbers:

```python
def add(a, b):
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b
```

Call it as `add(2, 3)`."""
STATS = {"tokens": 42, "steps": 17, "draft_tokens": 60, "accepted_tokens": 25, "tokens_per_s": 187.5,
         "mean_accepted": 2.47, "prompt_tokens": 31, "reused_tokens": 0,
         "by_source": {"auto:retrieval": 16, "auto:recycling": 9},
         "step_tokens": [1, 2, 4, 1, 3, 5, 2, 1, 4, 3, 2, 1, 3, 4, 2, 3, 1]}


def stored_conversation(path) -> None:
    history = History(path)
    conversation = history.create("Adding numbers")
    history.add_message(conversation.id, "user", "Write a python function that adds two numbers")
    history.add_message(conversation.id, "assistant", ANSWER, STATS)
    history.create("An older chat about lists")
    history.set_state("last_conversation", str(conversation.id))
    history.close()


def app_with_history(make_app, tmp_path):
    stored_conversation(tmp_path / "chat.sqlite3")
    return make_app()


async def loaded(pilot) -> None:
    await ready(pilot.app, pilot)
    await pilot.pause()


def test_main_screen(snap_compare, make_app, tmp_path):
    app = app_with_history(make_app, tmp_path)

    async def show_details(pilot):
        await loaded(pilot)
        await pilot.press("ctrl+g")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=show_details)


def test_settings_modal(snap_compare, make_app, tmp_path):
    app = app_with_history(make_app, tmp_path)

    async def open_settings(pilot):
        await loaded(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_settings)


def test_help_screen(snap_compare, make_app, tmp_path):
    app = app_with_history(make_app, tmp_path)

    async def open_help(pilot):
        await loaded(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_help)
