"""Progress (on tqdm): silenced on request, one line per tenth of the work in logs, redrawn in place on a terminal."""
import io

from dartscc_fast.progress import ENV, Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_about_one_line_per_tenth():
    out = io.StringIO()
    bar = Progress(total=95, desc="search 1/3", stream=out)
    for i in range(95):
        bar.set(loss=0.123456, step=i)
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 10 <= len(lines) <= 12
    assert lines[0].startswith("search 1/3:") and "0/95" in lines[0]
    assert "95/95" in lines[-1] and "loss=0.1235 step=94" in lines[-1]
    assert bar.n == 95


def test_iteration_counts_and_closes():
    out = io.StringIO()
    assert [x * 2 for x in Progress([1, 2, 3], desc="items", stream=out)] == [2, 4, 6]
    assert "3/3" in out.getvalue().splitlines()[-1]


def test_silenced_by_the_argument_and_by_the_environment(monkeypatch):
    out = io.StringIO()
    for _ in Progress(range(5), stream=out, enabled=False):
        pass
    monkeypatch.setenv(ENV, "0")
    with Progress(total=5, stream=out) as bar:
        bar.update(5)
    assert out.getvalue() == "" and bar.n == 5


def test_a_log_without_a_total_stays_empty():
    out = io.StringIO()
    for _ in Progress(iter(range(5)), stream=out):
        pass
    assert out.getvalue() == ""


def test_a_terminal_is_redrawn_in_place():
    out = Terminal()
    bar = Progress(total=1000, desc="profiling", stream=out)
    for _ in range(1000):
        bar.update()
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rprofiling") and text.endswith("\n") and text.count("\n") == 1
    assert text.count("\r") < 20  # at most every 0.2 s, not once per update
    assert "1000/1000" in text.rsplit("\r", 1)[1]
