"""When progress bars are drawn: asked for (no --quiet) and stderr is a terminal.

Redirected to a file or a CI log, a bar would write hundreds of carriage-return updates per epoch; there the bars
stay off and only the one-line messages (epoch losses, per-run results) are printed.
"""


def bars_off(progress: bool) -> bool | None:
    """tqdm's `disable`: True when progress is off; None (tqdm: off unless the output is a terminal) when on."""
    return None if progress else True
