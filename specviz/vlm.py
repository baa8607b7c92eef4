"""A vision-language target (Idefics3 / SmolVLM) drafted for by text-only drafters.

Most of what a VLM writes is ordinary language, so a drafter that never sees the image can still
guess it (the LLaVA speculative-decoding paper's finding). Here:

- the image is encoded once (vision tower + connector) and merged into the prompt's embeddings at
  its image-token positions (`prompt_embeddings`); the prefill reads those rows, and every forward
  after it is a text-only forward of the VLM's language model over the cached image context;
- that language model is run as an ordinary causal LM (`text_model`: a LlamaForCausalLM sharing the
  VLM's weights), so the engine, its KV cache, the fast path and every verification rule are the
  ones text targets use;
- drafters see the text only (`TextOnly`): every id the drafter's vocabulary lacks (the image block
  tokens, and special tokens the VLM added, SmolVLM's above 49151) is left out of what it reads, and
  its distributions are padded with zeros to the target's vocabulary, so an id it cannot propose has
  q = 0 (the verifier's residual then covers it exactly).
"""
from __future__ import annotations

import hashlib
import weakref

import torch

from .drafters import TargetView
from .sampling import Warp
from .tree import DraftTree


def is_vlm(model) -> bool:
    """An Idefics3-style VLM: a vision tower, a connector and a language model under `model.model`."""
    inner = getattr(model, "model", None)
    return all(hasattr(inner, part) for part in ("vision_model", "connector", "text_model"))


_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def text_model(vlm) -> torch.nn.Module:
    """The VLM's language model as a causal LM (shared weights, nothing copied; one per VLM, so the fast
    path prepares its weights once)."""
    if vlm in _VIEWS:
        return _VIEWS[vlm]
    from transformers import LlamaForCausalLM

    config = vlm.config.text_config
    if getattr(config, "model_type", "llama") != "llama":
        raise ValueError(f"the VLM's language model is '{config.model_type}'; only Llama-family ones are supported")
    view = LlamaForCausalLM(config)
    view.model, view.lm_head = vlm.model.text_model, vlm.lm_head
    _VIEWS[vlm] = view.eval()
    return view


@torch.inference_mode()
def prompt_embeddings(vlm, ids: list[int], pixel_values: torch.Tensor,
                      pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[len(ids), hidden]: the prompt's input embeddings with the image's features at its image tokens."""
    inner = vlm.model
    device = next(vlm.parameters()).device
    ids_t = torch.tensor([ids], device=device)
    image_id = vlm.config.image_token_id
    want = int((ids_t == image_id).sum())
    features = torch.cat(list(inner.get_image_features(pixel_values=pixel_values.to(device),
                                                      pixel_attention_mask=pixel_attention_mask).pooler_output))
    if features.shape[0] != want:
        raise ValueError(f"the prompt has {want} image tokens but the image gives {features.shape[0]} features "
                         "(one image, as the processor lays it out)")
    embeds = inner.get_input_embeddings()(ids_t)
    return inner.inputs_merger(ids_t, embeds, features)[0]


def image_record(pixel_values: torch.Tensor, size: tuple[int, int] | None = None) -> dict:
    """What a trace keeps of the image: a hash of its pixels and its size, never the pixels."""
    digest = hashlib.sha256(pixel_values.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    return dict(sha256=digest, size=list(size) if size else list(pixel_values.shape[-2:]))


class TextOnly:
    """A drafter for a VLM target that reads the text alone: ids at or above `vocab` (what the drafter's
    own vocabulary covers) are left out of what it reads, and its q rows are padded to `target_vocab`."""

    def __init__(self, drafter, vocab: int, target_vocab: int):
        if getattr(drafter, "reads_target", ()):
            raise ValueError(f"drafter '{drafter.name}' reads the target's layers, which for a VLM hold image "
                             "positions the drafter never sees: pick a text-only drafter (pld, ngram, a model)")
        self.inner, self.vocab, self.target_vocab = drafter, vocab, target_vocab
        self.name = drafter.name
        self.greedy_only = drafter.greedy_only
        self.reads_target: tuple[int, ...] = ()
        self.seen: list[list[int]] = []  # what it was handed (tests check that no image token got through)

    @property
    def forward_seconds(self) -> float:
        return self.inner.forward_seconds

    def text(self, ids: list[int]) -> list[int]:
        return [i for i in ids if i < self.vocab]

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop=None) -> DraftTree:
        text = self.text(ids)
        self.seen.append(text)
        tree = self.inner.propose(text, warp, gen, stop)
        tree.q = {k: self._pad(v) for k, v in tree.q.items()}
        tree.q_node = {k: self._pad(v) for k, v in tree.q_node.items()}
        return tree

    def learn(self, tree: DraftTree, verdict, target: TargetView | None = None) -> None:
        if target is not None:
            logits = None if target.logits is None else target.logits[:, : self.vocab]
            target = TargetView({}, 0, logits, self.text(target.committed))
        self.inner.learn(tree, verdict, target)

    def reset(self) -> None:
        self.seen = []
        self.inner.reset()

    def _pad(self, q: torch.Tensor) -> torch.Tensor:
        if q.shape[-1] > self.target_vocab:
            raise ValueError(f"drafter '{self.name}' drafts over {q.shape[-1]} tokens, the target has {self.target_vocab}")
        return q if q.shape[-1] == self.target_vocab else torch.nn.functional.pad(q, (0, self.target_vocab - q.shape[-1]))


# ---------------------------------------------------------------- loading and prompts

IMAGE_BLOCK_TOKENS = ("<global-img>", "<fake_token_around_image>", "<image>")


def text_vocab(processor) -> int:
    """The explicit id mapping between a VLM's vocabulary and its text drafters': ids below this are the
    language model's own text tokens (shared with SmolLM2 for SmolVLM: 49152), the image block's tokens
    and the special tokens added with them start here."""
    tok = getattr(processor, "tokenizer", processor)
    ids = [tok.convert_tokens_to_ids(t) for t in IMAGE_BLOCK_TOKENS]
    ids = [i for i in ids if isinstance(i, int) and i != tok.unk_token_id]
    if not ids:
        raise ValueError("the processor's tokenizer has no image tokens")
    return min(ids)


def encode(processor, text: str, image=None, chat: bool = True) -> tuple[list[int], dict]:
    """(prompt ids, the processor's image tensors) for a user turn with an optional image (a PIL image)."""
    if chat and getattr(processor, "chat_template", None):
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    out = processor(text=[text], images=[[image]] if image is not None else None, return_tensors="pt")
    pixels = {k: out[k] for k in ("pixel_values", "pixel_attention_mask") if k in out}
    return out["input_ids"][0].tolist(), pixels


class VisionEngine:
    """An Engine over a VLM's language model plus its processor: streams events for text and an image."""

    def __init__(self, engine, vlm, processor, config):
        self.engine, self.vlm, self.processor, self.config = engine, vlm, processor, config
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.chat = True

    def encode(self, text: str, raw: bool | None = None) -> list[int]:
        return encode(self.processor, text, None, chat=not (self.config.raw if raw is None else raw))[0]

    def stream_image(self, text: str, image=None, settings=None, raw: bool | None = None, **limits):
        """Events of one run on `text` and an image (a PIL image, or None for text alone). The trace records
        the image's hash and size (RunStarted.image), never its pixels."""
        from dataclasses import replace

        raw = self.config.raw if raw is None else raw
        ids, pixels = encode(self.processor, text, image, chat=not raw)
        config = replace(self.config, settings=settings or self.config.settings, raw=raw)
        embeds = record = None
        if image is not None:
            embeds = prompt_embeddings(self.vlm, ids, pixels["pixel_values"], pixels.get("pixel_attention_mask"))
            record = image_record(pixels["pixel_values"], getattr(image, "size", None))
        return self.engine.stream(ids, config.settings, prompt=text, config=config.as_dict(), prompt_embeds=embeds,
                                  image=record, **limits)

    def stream_text(self, text: str, settings=None, raw: bool | None = None, **limits):
        return self.stream_image(text, None, settings, raw, **limits)

    def generate(self, text: str, image=None, settings=None):
        from .engine import Result

        events = list(self.stream_image(text, image, settings))
        end = events[-1]
        return Result(end.text, end.token_ids, end.metrics, end.stop_reason, events)
