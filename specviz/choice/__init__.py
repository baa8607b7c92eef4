"""Drafter choice (issue 18): a learned policy picks the drafter, or plain decoding, per prompt and,
behind a switch, re-decides as the text goes.

    features.py   what the policy sees: pooled prefill states, text statistics
    policy.py     the softmax policy, REINFORCE and the supervised best-arm baseline, its file
    bandit.py     the online re-decider (discounted Thompson sampling)
    auto.py       the `auto` drafter: an ordinary Drafter that delegates to the chosen arm
    arms.py       the arms, building them for a target, the policy file's place
    train.py      `python -m specviz train-policy` (collect.py, one level up, logs the outcomes)

At scale (the lead decides when; a progress bar shows the rate, a rerun resumes):

    python -m specviz collect --target smollm2-135m --limit 1000 --max-new-tokens 64
    python -m specviz train-policy --target smollm2-135m          # writes assets/policy/auto-smollm2-135m.*
    SPECVIZ_POLICY=/path/to/policy.safetensors python -m specviz generate --drafter auto-online --prompt ...
"""
