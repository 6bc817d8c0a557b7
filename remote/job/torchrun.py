"""torchrun for TuneDeck jobs: `torch.distributed.run` whose stop by a signal ends in one clear line.

torchrun turns the SIGTERM of a cancel (or of Slurm's notice before a time limit or a preemption) into a
SignalException: it forwards the signal to the training processes, waits for them to checkpoint and stop, and
then lets the exception escape as a traceback, so the log of a cancelled run ended like a crash. Everything else
is torchrun's own (same arguments, same failures):

    python -m remote.job.torchrun [torchrun arguments] -m remote.job.train RUN_DIR
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main()
    except SignalException as exc:
        try:
            name = signal.Signals(exc.sigval).name
        except ValueError:
            name = f"signal {exc.sigval}"
        print(f"[tunedeck] run cancelled by {name}: the training processes were told to stop and torchrun has "
              "ended (a cancel, or the scheduler's time limit or preemption)", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
