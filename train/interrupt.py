"""Ctrl-C during `train`: Ray's graceful abort, then the job's own "interrupted" (exit 130).

Ray Train 2.60's `fit()` installs a SIGINT handler (DataParallelTrainer.
_register_sigint_handler) that aborts the run through its controller and then ends
the driver with `sys.exit(0)` from inside the handler, or lets `fit()` fail with the
dead controller's error: the job used to exit 1 with Ray's message only.  This trainer
keeps Ray's abort (the workers stop, the checkpoints written so far stay; a checkpoint
cut off mid-write is skipped on --resume, train/checkpoint.usable_checkpoint) and turns
whatever `fit()` ends with after a SIGINT into KeyboardInterrupt, which the entry point
reports as "cycledrums train: interrupted" with exit status 130, as prepare and
evaluate do.  The SIGINT handler that was there before `fit()` is restored after it.
"""
from __future__ import annotations

import signal
import threading

from ray.train.torch import TorchTrainer


class InterruptibleTorchTrainer(TorchTrainer):
    _interrupted = False

    def _register_sigint_handler(self, controller):
        super()._register_sigint_handler(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            self._interrupted = True
            if callable(ray_handler):
                ray_handler(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)

    def fit(self):
        main_thread = threading.current_thread() is threading.main_thread()
        before = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            result = super().fit()
            if self._interrupted:  # the abort let the controller end its run "normally"
                raise KeyboardInterrupt("training run aborted by SIGINT")
            return result
        except BaseException as err:
            if self._interrupted and not isinstance(err, KeyboardInterrupt):
                raise KeyboardInterrupt("training run aborted by SIGINT") from None
            raise
        finally:
            if main_thread and before is not None:
                signal.signal(signal.SIGINT, before)
