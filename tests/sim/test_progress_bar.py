"""``manage.py simulate``'s progress bar: in place on a terminal, plain lines in a log."""

from __future__ import annotations

from fleet.management.commands.simulate import ProgressBar


def test_a_log_gets_a_plain_line_per_stage_start_and_tenth() -> None:
    """Not a terminal: a line at each stage's start and each further 10%, none redrawn in place.

    Calls at 0, 0.05, 0.1, 0.12, 0.35, 1.0 of ``static 1``: tenths 0, 0, 1, 1, 3, 10, so lines at
    0, 0.1, 0.35 and 1.0 (4); then ``policy`` at 0: a new stage, a fifth line."""
    lines: list[str] = []
    bar = ProgressBar(lines.append, tty=False)
    for done in (0, 0.05, 0.1, 0.12, 0.35, 1.0):
        bar("static 1", done)
    bar("policy", 0)
    assert len(lines) == 5
    assert all(line.endswith("\n") and "\r" not in line for line in lines)
    assert lines[2].startswith("static 1") and " 35%" in lines[2]
    assert lines[4].startswith("policy")


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    """A terminal: each drawing starts with a carriage return, and only the finished stage ends the line."""
    drawn: list[str] = []
    bar = ProgressBar(drawn.append, tty=True)
    bar("policy", 0.5)
    bar("policy", 1.0)
    assert all(text.startswith("\r") for text in drawn)
    assert not drawn[0].endswith("\n") and drawn[-1].endswith("\n")
    assert "[" + "#" * 30 + "]" in drawn[-1]
