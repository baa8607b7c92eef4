"""Outputs a callback leaves alone cost nothing: a fix for gradio 6's handling of skipped outputs.

The page's run event has fifteen outputs and each streamed update sets five of them. Gradio (6.31) turns every
output missing from a returned dict into `gr.skip()` ({"__type__": "update"}) and treats that like any property
update: it builds a new component from the old one's constructor arguments and computes its config twice
(api_info included, a pydantic JSON schema each time), ~1-3 ms per output in Python under the interpreter lock.
With thirty visitors streaming, that was a quarter of the app's busy time (a py-spy profile of the 30-session
load test), time the decoding thread then waited for. The frontend gets {"__type__": "update"} for a skip
either way, so here such outputs bypass gradio's per-output work and get exactly that message; every other
output goes through gradio unchanged (tests/test_skips.py compares the two paths).
"""
from __future__ import annotations

import copy


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value == {"__type__": "update"}


def install() -> None:
    """Wrap gradio.blocks.Blocks.postprocess_data once (idempotent)."""
    from gradio import blocks

    original = blocks.Blocks.postprocess_data
    if getattr(original, "_specviz_skips", False):
        return

    async def postprocess_data(self, block_fn, predictions, state):
        outputs = list(block_fn.outputs)
        if (isinstance(predictions, dict) and predictions
                and all(isinstance(key, blocks.Block) for key in predictions)):
            predictions = blocks.convert_component_dict_to_list(outputs, predictions)
        if (not isinstance(predictions, (list, tuple)) or len(predictions) != len(outputs) or len(outputs) < 2
                or block_fn.batch or getattr(block_fn, "is_validator_function", False)):
            return await original(self, block_fn, predictions, state)
        keep = [i for i, (block, value) in enumerate(zip(outputs, predictions))
                if block.stateful or not _is_skip(value)]
        if len(keep) == len(outputs):
            return await original(self, block_fn, predictions, state)
        result: list = [{"__type__": "update"} for _ in outputs]
        if keep:
            part = copy.copy(block_fn)
            part.outputs = [outputs[i] for i in keep]
            values = [predictions[i] for i in keep]
            # a single output is passed bare, as gradio expects from a one-output function
            done = await original(self, part, values if len(keep) > 1 else values[0], state)
            for i, value in zip(keep, done):
                result[i] = value
        return result

    postprocess_data._specviz_skips = True
    postprocess_data.__wrapped__ = original  # gradio's own, for comparison (tests)
    blocks.Blocks.postprocess_data = postprocess_data
