"""ensemble_jax/logs.py: messages reach the CLI's stderr and an entry point's `log=`
once each, and only process 0's are emitted."""
import logging

import jax

from ensemble_jax import logs


def test_sink_receives_each_message_once_and_only_while_the_call_runs(capsys, monkeypatch):
    got: list[str] = []
    # as a library caller who configured nothing (an in-process CLI test may have)
    monkeypatch.setattr(logs.STDERR, "level", logging.WARNING)

    @logs.sink
    def inner():
        logs.info("inner says")

    @logs.sink
    def outer():
        logs.info("outer says")
        inner(log=got.append)          # the same sink nested: not delivered twice
        logs.warning("warning: careful")
    outer(log=got.append)
    logs.info("after the call")
    assert got == ["outer says", "inner says", "warning: careful"]
    err = capsys.readouterr().err      # unconfigured: warnings only, as written
    assert "warning: careful" in err and "outer says" not in err


def test_other_processes_are_silent(monkeypatch):
    got: list[str] = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with logs.to(got.append):
        logs.info("from process 1")
        logs.warning("warning: from process 1")
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with logs.to(got.append):
        logs.info("from process 0")
    assert got == ["from process 0"]
