"""`watch()`: start a keeper and run its passes every `interval_s` until stopped (SIGTERM,
SIGINT, or `stop` set), or once."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from dagpg.settings import SERVICE_MANAGERS, KitSettings
from dagpg.watch.errors import WatchConfigurationError
from dagpg.watch.keeper import Event, Keeper, PassResult


def watch(settings: KitSettings, *, dagster_home=None, once: bool = False,
          check_only: bool = False, service_manager: str | None = None,
          stop: threading.Event | None = None,
          on_start: Callable[[list[str]], None] | None = None,
          on_event: Callable[[Event], None] | None = None,
          on_pass: Callable[[PassResult], None] | None = None,
          manager=None) -> PassResult | None:
    """Run the keeper. Raises ConfigurationError (one line) when it cannot start: an unknown
    service manager or service, no permission, no password, an unwritable log folder.
    Returns the last pass (None for `check_only`). `service_manager` overrides
    dagpg.watch.service_manager (the rendered services name the one that runs them)."""
    if service_manager:
        settings = with_service_manager(settings, service_manager)
    stop = stop or threading.Event()
    keeper = Keeper(settings, dagster_home=dagster_home, manager=manager, once=once,
                    emit=on_event, sleep=lambda s: stop.wait(s))
    restore = _stop_on_signals(stop) if not (once or check_only) else (lambda: None)
    last = None
    try:
        lines = keeper.start()
        if on_start:
            on_start(lines)
        if check_only:
            return None
        interval = settings.watch.interval_s
        while True:
            began = time.monotonic()
            last = keeper.run_pass()
            if on_pass:
                on_pass(last)
            if once or stop.wait(max(0.0, interval - (time.monotonic() - began))):
                return last
    finally:
        keeper.close()
        restore()


def with_service_manager(settings: KitSettings, name: str) -> KitSettings:
    if name not in SERVICE_MANAGERS:
        raise WatchConfigurationError(f"unknown service manager {name!r}; choose one of "
                                      f"{', '.join(SERVICE_MANAGERS)}")
    watch_settings = settings.watch.model_copy(update={"service_manager": name})
    return settings.model_copy(update={"watch": watch_settings})


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM (a service stop) and SIGINT end the loop after the current pass."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore
