"""How often a trained feature head's first guess is the target's next token, teacher-forced on the
target's own greedy answers to a prompt set, by category: the head as served, without the serving.

The served β1 of a chain mixes the head's quality with how the engine hands it features; here the
target answers each prompt greedily, one forward reads its states for the whole text, and the head
reads them as it does when serving (pair j = the state at j and the token at j + 1 predicts the token
at j + 2). If this agreement matches the served β1, serving loses nothing and the head is the limit.

    python -m specviz.train.agreement --kind eagle3 --prompts assets/prompts.jsonl
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch


@torch.inference_mode()
def first_guesses(model, head, seq: list[int]) -> torch.Tensor:
    """The head's top-1 after each pair j (the target's state at j, token j + 1): its guess of token j + 2,
    reading the target's states of the whole text in one forward."""
    from ..drafters.feature_head import readout_weight

    ids = torch.tensor(seq)
    states = model(ids[None], output_hidden_states=True).hidden_states
    feat = head.fuse(torch.cat([states[layer][0] for layer in head.config.layers], -1).float())
    emb = model.get_input_embeddings().weight[ids[1:]].float()
    out, _, _ = head(emb[None], feat[None, :-1], torch.arange(len(seq) - 1), causal=True)
    pred = (head.readout_input(out[0]) @ readout_weight(model, head.vocab_ids).float().T).argmax(-1)
    return head.vocab_ids[pred] if head.vocab_ids is not None else pred


def chat_encoder(tokenizer):
    def encode(text: str) -> list[int]:  # as the engine encodes a prompt for a chat model
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return encode


def agreement(model, encode, head, prompts: list[dict], max_new_tokens: int = 96,
              progress=lambda items: items) -> dict[str, tuple[int, int]]:
    """category -> (positions where the head's top-1 is the target's token, response positions scored);
    "all" pools them. encode(text) -> prompt ids."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p in progress(prompts):
        ids = encode(p["prompt"])
        with torch.inference_mode():
            seq = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0]
        pred = first_guesses(model, head, seq.tolist())
        for j in range(len(ids) - 2, len(seq) - 2):  # pairs whose next token is a response token
            ok = int(pred[j] == seq[j + 2])
            for key in (p.get("category", "all"), "all"):
                hits[key][0] += ok
                hits[key][1] += 1
    return {k: (v[0], v[1]) for k, v in hits.items()}


def main(argv: list[str] | None = None) -> int:
    from .. import models
    from ..drafters.feature_head import FeatureHead, default_weights

    ap = argparse.ArgumentParser(prog="python -m specviz.train.agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--kind", default="eagle3", help="eagle or eagle3 (the shipped head), unless --weights")
    ap.add_argument("--weights", help="a head's .safetensors")
    ap.add_argument("--prompts", default="assets/prompts.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    a = ap.parse_args(argv)
    model, tokenizer, _ = models.load(a.target)
    head = FeatureHead.load(a.weights or default_weights(a.target, a.kind)).float().eval()
    prompts = [json.loads(line) for line in Path(a.prompts).read_text().splitlines() if line.strip()]
    from tqdm import tqdm

    result = agreement(model.eval(), chat_encoder(tokenizer), head, prompts, a.max_new_tokens,
                       lambda items: tqdm(items, desc="prompts", unit="prompt"))
    print("| category | top-1 agreement | positions |\n|---|---|---|")
    for key in sorted(result, key=lambda k: (k == "all", k)):
        hit, n = result[key]
        print(f"| {key} | {hit / n:.3f} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
