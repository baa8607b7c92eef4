"""The page's fixed words and style: the introduction, "How to read it", and a little CSS."""

INTRO = """# specviz · watch speculative decoding, token by token
A small, cheap **drafter** guesses the next few tokens; the big **target** model checks all the guesses in
**one** forward pass, keeps those it agrees with and adds one token of its own. The text is exactly what the
target alone would write, only faster when the guesses are good. Pick a prompt and press **Run**, or explore the
recorded example already on display (no model needed)."""

HEADER = ("### specviz · watch speculative decoding, token by token\n"
          "A small **drafter** guesses the next tokens, the **target** checks them all in one forward and keeps those "
          "it agrees with: the same text, faster when the guesses are good. Press **Run ▶**, or explore the recorded "
          "example on display (*How to read it* explains every panel).")

HOW_TO_READ = """**How to read this page**

* **Text**: every token is colored by how it came (legend above it). Hover any token for its numbers: q = the
  drafter's probability, p = the target's, the chance the draft was accepted, `min(1, p/q)`, and the drafts the target
  refused at its place. Tick *show rejected drafts* to see those struck through in red where they were proposed (a
  tree drafter proposes many; the step explorer shows them all).
* **Step explorer**: one *step* is one forward pass of the target. The graph shows what the drafter proposed in that
  step: a chain (one guess per position) or a tree (several guesses per position, from tree drafters such as
  `pld-tree` and `ngram-tree` or a model drafter's tree shapes). Green nodes were accepted, red rejected, grey never
  checked; the diamond is the token the target added itself. With `eagle3+ngram` the tree is merged from two
  drafters' trees (as in SpecInfer): circles are the trained head's guesses, squares the n-gram counts', hexagons
  guesses both made; one forward verifies them all. The explanation beside it says, in words, what the
  verification rule did and why drafting stopped where it did. Drag the slider or use ◀ ▶ to look at any step.
* **Entropy**: the target's uncertainty at every generated token, and the drafter's at every drafted one. Drafts
  fail where the models are unsure. Marks on the axis show where each drafting round stopped: at its length limit,
  or earlier because the stopping rule said so (hover a mark for the rule, its reason and its numbers).
* **Metrics**: τ is tokens per target forward (AR = 1). *Acceptance per step* counts the drafts the target checked
  on its path (a chain's and a tree's on the same footing); *acceptance per node* counts every drafted node, most of
  which a tree never puts on the path. β is the chance a draft is accepted at each depth; α is their mean. Speeds are
  for decoding: the first step, which reads the prompt, is reported apart. The predicted speedup combines τ and the
  drafting time with this machine's measured cost of a forward over 1 and over n positions (timed in every run);
  *measure against AR* (or a race) measures it.
* **Drafter menu**: each drafter's measured decoding speed on this machine against plain decoding of the same target;
  a drafter that measured slower than no drafter is marked ⚠ and a run with it is preceded by a warning.
* **Knobs**: the *verification rule* decides which drafts are kept (rules marked LOSSY trade the target's exact
  distribution for longer accepted runs); the *stopping rule* decides when a drafting round ends (its parameters
  appear under it); the *fast path* uses pre-packed CPU kernels where the model supports them (same results).
* **Teaching**: the *Guided lesson* walks seven recorded runs (no model needed) and outlines the panel each step is
  about. *Lossless?* samples the first k tokens N times with plain decoding and with your drafter and rule, and tests
  both against the target's exact distribution (a lossy rule, or the teacher's broken verifier, fails it). *What if*
  prices any acceptance, draft length, drafter cost and verification cost with the metrics table's own formula, with
  your runs as points. *Acceptance map*: β by draft position and prompt category, from a bench JSON or this session.
* **Step-by-step** runs live, two clicks a step: *Verify ▶* after the drafter's guesses appear (grey, not checked
  yet), *Draft ▶* after the target's verdicts; each step is explained in words.
* **Stop** ends a run at its next forward; the part decoded so far can be downloaded as a trace marked *partial*.
* **Waiting**: one run decodes at a time. While others' runs go first, the views show `queue: k/n | t/ETA s` (your
  place in the queue and the expected wait); when the queue is full, the page says *This application is currently
  busy. Please try again.* and nothing is queued.
"""

CSS = """
.specviz-explain {font-size: 14px}
#specviz-status {min-height: 2.4em}
#specviz-tabs {scroll-margin-top: 4px}
#specviz-header p {margin: 0 0 4px 0}
footer {display: none !important}
#specviz-runbar {gap: 6px; flex-wrap: wrap}
/* menu labels wrap instead of hiding under the arrow */
.specviz-menu input {text-overflow: ellipsis; padding-right: 2.2em !important}
.specviz-menu ul.options li {white-space: normal}
#specviz-drafter-note p {font-size: 13px; margin: 0}
/* the guided lesson's card (ui/teach.py): over the control column, so the panels it points at stay in view */
#specviz-lesson-card {position: fixed; left: 16px; bottom: 16px; width: 400px; max-height: 60vh; overflow: auto;
  z-index: 1000; background: #fffbeb; border: 2px solid #f59e0b; border-radius: 10px; padding: 10px 12px;
  box-shadow: 0 8px 24px rgba(0,0,0,.18)}
#specviz-lesson-card p {font-size: 14px; margin: 0 0 6px 0}
"""
