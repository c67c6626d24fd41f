"""The CLI's output of an in-process engine (engine.cli.main.Output): the lines its event loop
makes within OUTPUT_BATCH_S leave in one write, in order, before anything said after them;
lines still pending when the loop stops are written by ``flush`` (the CLI's ``main`` always
calls it)."""

from __future__ import annotations

import asyncio

import pytest

from engine.cli.main import OUTPUT_BATCH_S, Output


def test_lines_of_one_batch_leave_in_one_write_in_order() -> None:
    writes: list[tuple[str, str]] = []
    out = Output(True, lambda stream, text: writes.append((stream, text)))

    async def engine() -> None:
        for i in range(5):
            out.emit({"n": i})
            await asyncio.sleep(0)  # lines of several loop passes
        assert writes == []  # not yet: OUTPUT_BATCH_S after the first
        await asyncio.sleep(OUTPUT_BATCH_S * 3)
        out.emit({"n": 5})
        await asyncio.sleep(OUTPUT_BATCH_S * 3)

    asyncio.run(engine())
    assert writes == [("stdout", "".join(f'{{"n": {i}}}\n' for i in range(5))),
                      ("stdout", '{"n": 5}\n')]


def test_an_error_or_a_line_off_the_loop_writes_the_pending_lines_first() -> None:
    writes: list[tuple[str, str]] = []
    out = Output(True, lambda stream, text: writes.append((stream, text)))

    async def engine() -> None:
        out.emit({"event": 1})
        out.error("error: BOOM: said after the event")

    asyncio.run(engine())
    out.emit({"result": "done"})  # off the loop: written at once
    assert writes == [("stdout", '{"event": 1}\n'), ("stderr", "error: BOOM: said after the event\n"),
                      ("stdout", '{"result": "done"}\n')]


def test_lines_left_pending_by_a_stopped_loop_are_written_by_flush() -> None:
    writes: list[tuple[str, str]] = []
    out = Output(True, lambda stream, text: writes.append((stream, text)))
    loop = asyncio.new_event_loop()

    async def last_pass() -> None:
        out.emit({"event": "last"})
        loop.stop()  # the loop ends before the batch's write is due

    try:
        task = loop.create_task(last_pass())
        loop.run_forever()
        assert task.done()
    finally:
        loop.close()
    assert writes == []
    out.flush()
    out.flush()  # nothing twice
    assert writes == [("stdout", '{"event": "last"}\n')]


def test_text_output_and_the_progress_bar_keep_their_order() -> None:
    writes: list[tuple[str, str]] = []
    out = Output(False, lambda stream, text: writes.append((stream, text)), progress=True)

    async def engine() -> None:
        out.text("[t] game queued")
        out.text("[t] game downloading")

    asyncio.run(engine())
    out.text("installed")
    assert "".join(t for _, t in writes) == "[t] game queued\n[t] game downloading\ninstalled\n"


def test_a_failed_write_of_the_loop_is_raised_where_the_next_line_is_made() -> None:
    """A closed pipe: the loop's write fails in its own callback; the next line made (on the
    loop, or off it by ``flush``) raises it, as a direct write did, rather than the loop
    logging it and the command going on without output."""
    def write(stream: str, text: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    out = Output(True, write)

    async def engine() -> None:
        out.emit({"event": 1})
        await asyncio.sleep(OUTPUT_BATCH_S * 3)
        with pytest.raises(BrokenPipeError):
            out.emit({"event": 2})

    asyncio.run(engine())
    with pytest.raises(BrokenPipeError):
        out.flush()


def test_the_progress_bar_and_its_end_come_in_order() -> None:
    from engine.core.messages import TaskStatus

    writes: list[str] = []
    out = Output(False, lambda stream, text: writes.append(text), progress=True)

    def status(state: str, pct: float) -> TaskStatus:
        return TaskStatus(task_id="t" * 32, product_id="game", status=state,
                          total_progress_percentage=pct, download_speed_bps=1000,
                          estimated_time_left_seconds=3, downloaded_bytes=int(pct),
                          total_size_bytes=100)

    async def engine() -> None:
        out.event(status("downloading", 50.0))
        out.event(status("completed", 100.0))

    asyncio.run(engine())
    out.flush()  # as main() does
    text = "".join(writes)
    assert text.startswith("\rgame ") and "50.0%" in text
    assert text.endswith("\n[tttttttt] game completed\n")
