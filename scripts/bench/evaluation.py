"""Section 3: the evaluation step (no gradients) against PyTorch + transformers eager."""

import harness
import steps_common


def run(ctx: harness.Context) -> harness.Section:
    return steps_common.section(ctx, eval_=True)
