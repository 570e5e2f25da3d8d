"""What the humans' decisions teach the thresholds. Plain arithmetic over the decided items, no Flask.

For each decided item: the model's adult score (the sum of its adult classes, hentai + porn + sexy for
GantMan's) and the human's label. Two things come of it:

- the distribution of the adult score for items humans called adult and for items they called
  safe (an SVG histogram, drawn here, so the page loads no chart library);
- for candidate thresholds t (NSFW_ADULT_THRESHOLD = NSFW_SAFE_THRESHOLD = t), the share of these
  items the model would have decided alone (adult score >= t, or safe score >= t), and the share of
  those automatic decisions the humans disagree with; the suggestion is the lowest t (the most
  automation) whose disagreement stays within the target.

The decided items are the ones the model sent to humans (unknown) and the audit samples: unknown
items over-represent the hard cases, so the audit samples (NSFW_REVIEW_AUDIT_RATE) are what make the
table speak for all traffic. The page says how many of each it learned from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nsfw.model.specs import MODELS

BINS = 20
CANDIDATES = tuple(round(0.5 + 0.025 * n, 3) for n in range(1, 20))  # 0.525 .. 0.975


@dataclass(frozen=True)
class Row:
    threshold: float
    automatic: float  # share of the items decided without a human
    disagreement: float | None  # share of those the humans labelled otherwise (None: none automatic)


@dataclass(frozen=True)
class Insights:
    count: int
    adult: list[int]  # histogram of the adult score, items humans called adult
    safe: list[int]  # the same, items humans called safe
    rows: list[Row]
    suggestion: Row | None


def adult_score(model: str, scores: Mapping[str, float]) -> float:
    """The sum of the model's adult classes (GantMan's when the catalogue does not know the model):
    what a verdict compares with its threshold."""
    spec = MODELS.get(model)
    classes = spec.adult_classes if spec else ("hentai", "porn", "sexy")
    return sum(scores.get(name, 0.0) for name in classes)


def learn(decided: Sequence[tuple[str, dict[str, float], str]], target: float = 0.01) -> Insights:
    points = [(adult_score(model, scores), label) for model, scores, label in decided]
    histograms = {"adult": [0] * BINS, "safe": [0] * BINS}
    for score, label in points:
        histograms[label][min(BINS - 1, int(score * BINS))] += 1
    rows = []
    for t in CANDIDATES:
        automatic = [(score, label) for score, label in points if score >= t or 1 - score >= t]
        wrong = sum(1 for score, label in automatic if ("adult" if score >= t else "safe") != label)
        rows.append(
            Row(
                threshold=t,
                automatic=len(automatic) / len(points) if points else 0.0,
                disagreement=wrong / len(automatic) if automatic else None,
            )
        )
    within = [row for row in rows if row.disagreement is not None and row.disagreement <= target]
    suggestion = min(within, key=lambda row: row.threshold) if within else None
    return Insights(len(points), histograms["adult"], histograms["safe"], rows, suggestion)


def histogram_svg(insights: Insights, width: int = 600, height: int = 220) -> str:
    """Two overlaid histograms as an SVG string: humans' adult in one colour, safe in another, with
    axis labels; numbers only, so nothing in it comes from a user."""
    top = max([*insights.adult, *insights.safe, 1])
    left, bottom, plot_w, plot_h = 40, height - 30, width - 50, height - 50
    bar = plot_w / BINS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="chart-title" class="chart"><title id="chart-title">Adult score of the decided items: '
        f"{sum(insights.adult)} called adult, {sum(insights.safe)} called safe</title>",
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" class="axis"/>',
    ]
    for series, offset, css in (("adult", 0.0, "bar-adult"), ("safe", bar / 2, "bar-safe")):
        for n, count in enumerate(getattr(insights, series)):
            h = plot_h * count / top
            x = left + n * bar + offset
            parts.append(
                f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar / 2 - 1:.1f}" height="{h:.1f}" class="{css}">'
                f"<title>{series}: {count} with score {n / BINS:.2f}-{(n + 1) / BINS:.2f}</title></rect>"
            )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * plot_w
        anchor = "start" if tick == 0 else "end" if tick == 1 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="{anchor}" class="tick">{tick:.2f}</text>')
    parts.append(f'<text x="{left}" y="14" class="tick">{top} items</text></svg>')
    return "".join(parts)
