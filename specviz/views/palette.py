"""One legend for every view, matching the CLI: accepted green, resampled yellow, bonus cyan,
target plain, rejected red and struck through; drafts never checked are grey."""
from __future__ import annotations

# Token backgrounds / text colors in the streamed text (light tints keep the text readable).
TEXT_STYLE = {
    "accepted": "background:#bbf7d0;color:#14532d;",
    "resampled": "background:#fde68a;color:#713f12;",
    "bonus": "background:#a5f3fc;color:#164e63;",
    "target": "",
    "rejected": "background:#fee2e2;color:#b91c1c;text-decoration:line-through;text-decoration-thickness:2px;",
}

# Marker colors in the figures (saturated, so small markers stay distinguishable).
MARKER = {
    "accepted": "#16a34a",
    "rejected": "#dc2626",
    "unvisited": "#cbd5e1",
    "pending": "#e0e7ff",
    "resampled": "#eab308",
    "bonus": "#06b6d4",
    "target": "#ffffff",
    "context": "#475569",
}

MEANING = {
    "accepted": "accepted draft token: the drafter guessed it and the target agreed",
    "resampled": "resampled: a draft was rejected, so the target drew this token from the residual",
    "bonus": "bonus: every draft was accepted, so the same target forward gave one more token for free",
    "target": "target only: nothing was drafted, a plain one-token step",
    "rejected": "rejected draft: proposed here by the drafter, refused by the target",
    "unvisited": "never checked: it came after a rejected draft",
    "pending": "drafted, not checked yet: the target has not run its forward (step-by-step)",
}

SHORT = {
    "accepted": "accepted draft",
    "resampled": "resampled after a rejection",
    "bonus": "bonus token",
    "target": "target only (no draft)",
    "rejected": "rejected draft",
    "unvisited": "never checked",
    "pending": "drafted, not checked yet",
}
