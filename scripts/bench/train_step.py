"""Section 1: the fine-tune step (forward, backward, clipping, AdamW) against PyTorch +
transformers eager, same threads and precision."""

import harness
import steps_common


def run(ctx: harness.Context) -> harness.Section:
    return steps_common.section(ctx, eval_=False)
