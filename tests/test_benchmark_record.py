"""benchmarks/record.py keeps each benchmark's rows inside its own BENCHMARKS.md section."""

from benchmarks.record import record


def test_rows_land_in_their_own_section(tmp_path):
    md = tmp_path / "B.md"
    record("A (a.py)", "| x |\n|---|", "| 1 |", md)
    record("B (b.py)", "intro B", "### run 1\n\n| 7 |", md)
    record("A (a.py)", "| x |\n|---|", "| 2 |", md)
    record("B (b.py)", "intro B", "### run 2\n\n| 8 |", md)
    text = md.read_text()
    assert text == ("# Benchmarks\n\n## A (a.py)\n\n| x |\n|---|\n| 1 |\n| 2 |\n\n"
                    "## B (b.py)\n\nintro B\n\n### run 1\n\n| 7 |\n\n### run 2\n\n| 8 |\n")
