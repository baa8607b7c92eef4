"""A vision-language target (tiny random Idefics3, the SmolVLM architecture) drafted for by text-only
drafters: greedy output identical to the VLM's own, sampling exact with the image in the context, and
the drafter never handed an image token."""
from functools import partial

import pytest
import torch

from exact import exact_joint, pooled_pvalue, sampled
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.prompt_lookup import PromptLookupDrafter
from specviz.engine import Engine, Settings
from specviz.verify import verify_sampling
from specviz import vlm as V

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT, GLOBAL_IMG, FAKE, EOU, IMAGE = 12, 12, 13, 14, 15  # text ids 0..11, then the image block's tokens
VOCAB = 16


def tiny_vlm(seed: int = 0):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                       tie_word_embeddings=False)
    vision = Idefics3VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    model = Idefics3ForConditionalGeneration(Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                                                            image_token_id=IMAGE)).eval()
    with torch.no_grad():  # sharp attention and logits: the next token depends on the whole context, image included
        model.lm_head.weight.mul_(6.0)
        for layer in model.model.text_model.layers:
            for proj, scale in (("q_proj", 4), ("k_proj", 4), ("v_proj", 3)):
                getattr(layer.self_attn, proj).weight.mul_(scale)
        model.model.connector.modality_projection.proj.weight.mul_(20.0)
    return model


def image(seed: int) -> torch.Tensor:
    return torch.randn(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


PROMPT = [1, 2, FAKE, GLOBAL_IMG, IMAGE, IMAGE, IMAGE, IMAGE, FAKE, 3, 4]


@pytest.fixture(scope="module")
def model():
    return tiny_vlm()


def text_drafter(seed=5):
    from conftest import tiny_llama

    return tiny_llama(seed, vocab=TEXT)


def engine(model, drafter=None, rule=None):
    inner = V.TextOnly(drafter, TEXT, VOCAB) if drafter is not None else None
    return Engine(V.text_model(model), str, inner, eos_ids={EOU}, rule=rule), inner


def with_image(e: Engine, embeds):
    """Engine.run with the image's embeddings (what the app and CLI pass)."""
    def run(prompt, settings):
        events = list(e.stream(prompt, settings, prompt_embeds=embeds))
        return events[-1]
    e.run = run
    return e


@torch.no_grad()
def vlm_logits(model, ids, pixels):
    return model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0, -1]


def test_text_only_drafters_give_the_vlms_own_greedy_output(model):
    pixels = image(1)
    embeds = V.prompt_embeddings(model, PROMPT, pixels)
    with torch.no_grad():  # the VLM's own greedy decoding, full forwards with the image every time
        ids, want = list(PROMPT), []
        for _ in range(12):
            tok = int(vlm_logits(model, ids, pixels).argmax())
            want.append(tok)
            ids.append(tok)
            if tok == EOU:
                break
    plain, _ = engine(model)
    assert list(plain.stream(PROMPT, Settings(max_new_tokens=12), prompt_embeds=embeds))[-1].token_ids == want
    for drafter in (ModelDrafter(text_drafter(), chain_builder(3)), PromptLookupDrafter(TEXT, k=3, min_ngram=1)):
        spec, inner = engine(model, drafter)
        out = list(spec.stream(PROMPT, Settings(max_new_tokens=12), prompt_embeds=embeds))
        assert out[-1].token_ids == want
        assert inner.seen and all(max(ids) < TEXT for ids in inner.seen)  # no image token reached the drafter
    # the image matters: another image, another answer (or the test above would prove nothing about it)
    other = list(plain.stream(PROMPT, Settings(max_new_tokens=12), prompt_embeds=V.prompt_embeddings(model, PROMPT, image(2))))
    assert other[-1].token_ids != want


@torch.no_grad()
def exact_joint_vlm(model, pixels, n, warp):
    """The VLM's exact joint of its first n tokens given the image: full, cache-free forwards of its
    language model over the prompt's merged embeddings and the tokens after it (a generated token is
    text, whatever its id: the image is the prompt's)."""
    embeds, lm = V.prompt_embeddings(model, PROMPT, pixels), V.text_model(model)

    def next_logits(prefix):
        x = torch.cat([embeds, lm.get_input_embeddings()(torch.tensor(list(prefix), dtype=torch.long))])
        return lm(inputs_embeds=x[None]).logits[0, -1]

    return exact_joint(next_logits, VOCAB, n, warp)


SAMPLES = 3000


def test_sampling_is_exact_with_the_image_in_the_context_and_a_broken_verifier_fails(model):
    settings = Settings(max_new_tokens=2, temperature=1.0, stop_at_eos=False)
    pixels = image(3)
    embeds = V.prompt_embeddings(model, PROMPT, pixels)
    truth = exact_joint_vlm(model, pixels, 2, settings.warp)
    other = exact_joint_vlm(model, image(4), 2, settings.warp)
    assert 0.5 * sum(abs(truth[s] - other[s]) for s in truth) > 0.05  # the image changes the distribution
    good, _ = engine(model, ModelDrafter(text_drafter(), chain_builder(2)))
    p = pooled_pvalue(sampled(with_image(good, embeds), PROMPT, settings, SAMPLES), truth, SAMPLES)
    assert p > 1e-3, p
    broken, _ = engine(model, ModelDrafter(text_drafter(), chain_builder(2)),
                       rule=partial(verify_sampling, residual=lambda p, q: p))
    p_broken = pooled_pvalue(sampled(with_image(broken, embeds), PROMPT, settings, SAMPLES), truth, SAMPLES)
    assert p_broken < 1e-6, p_broken


def test_a_drafter_reading_the_targets_layers_is_refused(model):
    class Reads:
        name, greedy_only, reads_target, forward_seconds = "eagle", False, (-1,), 0.0

    with pytest.raises(ValueError, match="reads the target's layers"):
        V.TextOnly(Reads(), TEXT, VOCAB)


def test_the_trace_keeps_a_hash_and_size_of_the_image_not_its_pixels():
    rec = V.image_record(image(1), (640, 480))
    assert rec == V.image_record(image(1), (640, 480)) and rec != V.image_record(image(2), (640, 480))
    assert set(rec) == {"sha256", "size"} and rec["size"] == [640, 480]


def saved_tiny_smolvlm(path):
    """A tiny random SmolVLM-shaped model saved with its processor: SmolLM2's tokenizer plus the image
    block's tokens (ids 49152..49279, as SmolVLM lays them out), 32-pixel crops of 4 tokens each."""
    from transformers import (AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor,
                              LlamaConfig)
    from transformers.models.idefics3 import Idefics3ImageProcessor
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    from specviz import models

    tok = AutoTokenizer.from_pretrained(models.hf_dir("smollm2-135m"))
    added = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
             + ["<fake_token_around_image>", "<image>"] + [f"<|reserved_special_token_{i}|>" for i in range(88)]
             + ["<end_of_utterance>"])
    tok.add_special_tokens({"additional_special_tokens": added})
    # a SmolVLM-style chat template: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:"
    template = ("<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
                "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
                "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
                "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
                "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessor(size={"longest_edge": 32},
                                                                         max_image_size={"longest_edge": 32}),
                                  tokenizer=tok, image_seq_len=4, chat_template=template)
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=2,
                       eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"))
    vision = Idefics3VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    model = Idefics3ForConditionalGeneration(Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                                                            image_token_id=tok.convert_tokens_to_ids("<image>")))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_a_vlm_directory_loads_and_runs_through_the_api(tmp_path):
    from specviz import models

    if models.status("smollm2-135m") != "ready":
        pytest.skip("smollm2-135m (its tokenizer) not fetched")
    from PIL import Image

    from specviz.api import build
    from specviz.config import RunConfig
    from specviz.trace import dumps, loads

    path = saved_tiny_smolvlm(tmp_path / "tiny-smolvlm")
    model, processor, _ = models.load(path)
    assert V.is_vlm(model) and V.text_vocab(processor) == 49152  # the id mapping: SmolLM2's text ids below
    picture = Image.fromarray((torch.rand(40, 40, 3) * 255).to(torch.uint8).numpy())
    config = RunConfig(target=str(path), drafter="pld", settings=Settings(max_new_tokens=10, stop_at_eos=False))
    spec = build(config)
    assert isinstance(spec, V.VisionEngine)
    events = list(spec.stream_image("What is in the picture?", picture))
    plain = build(RunConfig(target=str(path), drafter="none", settings=config.settings)).generate(
        "What is in the picture?", picture)
    assert events[-1].token_ids == plain.token_ids
    started = events[0]
    assert started.image["size"] == [40, 40] and len(started.image["sha256"]) == 16
    assert all(max(ids, default=0) < 49152 for ids in spec.engine.drafter.seen)
    replayed = loads(dumps(events))  # the trace replays without the image: only its hash and size are in it
    assert replayed[0].image == started.image and "pixel" not in dumps(events)


def test_the_command_line_takes_an_image(tmp_path, capsys):
    from specviz import models

    if models.status("smollm2-135m") != "ready":
        pytest.skip("smollm2-135m (its tokenizer) not fetched")
    from PIL import Image

    from specviz.cli import main
    from specviz.trace import load

    path = saved_tiny_smolvlm(tmp_path / "tiny-smolvlm")
    Image.new("RGB", (48, 32), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "not-an-image.png").write_text("hello")
    args = ["generate", "--target", str(path), "--drafter", "pld", "--prompt", "Describe it.", "--max-new-tokens", "6"]
    assert main(args + ["--image", str(tmp_path / "red.png"), "--trace", str(tmp_path / "t.json")]) == 0
    assert load(tmp_path / "t.json")[0].image["size"] == [48, 32]
    assert main(args + ["--image", str(tmp_path / "not-an-image.png")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
    assert main(["generate", "--target", "smollm2-135m", "--prompt", "Hi", "--image", str(tmp_path / "red.png")]) == 2
    assert "needs a vision-language target" in capsys.readouterr().err


def test_the_vlm_bench_runs_plain_and_text_only_drafters_side_by_side(tmp_path):
    from specviz import models

    if models.status("smollm2-135m") != "ready":
        pytest.skip("smollm2-135m not fetched")
    from specviz.bench_vlm import PROMPTS, read, run

    path = saved_tiny_smolvlm(tmp_path / "tiny-smolvlm")
    rows = read(PROMPTS)
    assert {r["category"] for r in rows} == {"caption", "question", "reading"}
    report = run(str(path), [("pld", "chain", 4), ("smollm2-135m", "chain", 3)], rows[:3], PROMPTS.parent, 8,
                 log=lambda *_: None)
    assert set(report["table"]) == {"plain (AR)", "pld:chain:4", "smollm2-135m:chain:3"}
    assert all(t["identical_to_plain"] for t in report["table"].values())
    assert report["table"]["plain (AR)"]["overall"]["vs_plain"] == 1.0


def test_the_visitors_image_goes_to_the_vision_language_target_only(monkeypatch):
    from specviz.ui import callbacks
    from specviz.ui.request import read_request
    from specviz.ui.session import Session

    monkeypatch.setenv("SPECVIZ_VLM", "some/vlm")
    session, picture = Session(), object()
    callbacks.set_image(dict(image=picture), session)
    text = read_request("Describe it.", "smollm2-135m", "pld", "chain", 4, 0.0, 1.0, 0, 8)
    assert callbacks.with_image(text, session).image is None  # a text target reads the text
    vision = read_request("Describe it.", "some/vlm", "pld", "chain", 4, 0.0, 1.0, 0, 8)
    assert callbacks.with_image(vision, session).image is picture
