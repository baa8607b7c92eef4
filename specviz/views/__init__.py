"""Pure views: a run's event list in, HTML / plotly figures / markdown out.

Live runs and replayed traces go through the same functions, so they render identically.
"""
from .drafter_view import RunRecord, drafter_markdown, record
from .entropy_figure import entropy_figure
from .explain import explain_run_step, explain_step
from .lengths_figure import lengths_figure
from .metrics_view import metrics_figure, metrics_markdown, speedup
from .steps import (Step, decode_metrics, ended_early, first_step_metrics, generated_text, instructive_step,
                    latest_metrics,
                    run_finished, run_started, split_steps)
from .tokens_html import legend_html, tokens_html
from .timeline import timeline_figure
from .tree_figure import step_tree_figure, tree_figure

__all__ = [
    "RunRecord", "Step", "decode_metrics", "drafter_markdown", "ended_early", "first_step_metrics", "instructive_step", "entropy_figure", "explain_run_step", "explain_step",
    "generated_text", "latest_metrics", "legend_html", "lengths_figure", "metrics_figure", "metrics_markdown", "record",
    "run_finished", "run_started", "speedup", "split_steps", "step_tree_figure", "timeline_figure",
    "tokens_html", "tree_figure",
]
