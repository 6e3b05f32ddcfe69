"""StepGate: an `on_progress` callback that holds a call at a chosen point until the call's token
is cancelled, and counts what the call still reports there afterwards. Cancel and Ctrl-C tests synchronize on it, never on a sleep: the cancel is sent once
the call is known to be inside the step it targets, and the step cannot finish before the cancel
lands, on an idle machine, a loaded one or one core alike.

Also used as a script prelude by subprocess tests (see SIGINT_PRELUDE)."""

from __future__ import annotations

import threading
from typing import Callable, Optional

import ecso_edge

# A child started from a non-interactive shell's background job (`cmd &`, as CI runners may do)
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: a Ctrl-C test
# must give its child the handler an interactive user has.
SIGINT_PRELUDE = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


class StepGate:
    """Holds the call at (`step`, `phase`) once `done` reaches `at` (for "encode": once the
    encoder has computed some nodes), calling `on_reached()` first, then waiting for `token`."""

    def __init__(self, token: ecso_edge.CancelToken, step: str, phase: str = "generate", at: int = 1,
                 on_reached: Optional[Callable[[], object]] = None) -> None:
        self.token = token
        self.step, self.phase, self.at = step, phase, at
        self.on_reached = on_reached
        self.reached = threading.Event()
        # progress the call reported in the gate's (step, phase) after the gate let it go: the work
        # it did after the cancel, counted in tokens (or encoder check points), not in seconds
        self.after_release = 0

    def __call__(self, step: str, phase: str, done: int, total: int) -> None:
        if self.reached.is_set():
            self.after_release += step == self.step and phase == self.phase
            return
        if step != self.step or phase != self.phase or done < self.at:
            return
        self.reached.set()
        if self.on_reached is not None:
            self.on_reached()
        self.token.wait()  # the GIL is released while waiting
