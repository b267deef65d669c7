"""How a figure looks: one frozen ``FigureStyle`` for the screen (the default) or for a paper.

The paper style uses larger fonts, the Okabe-Ito palette (distinguishable under the common forms of
colour blindness; Okabe & Ito 2008) and no titles (a paper's caption says what a title would). Every
figure function takes a style and ends with ``style.finish(fig, ...)``, so the app, the notebooks and
``workbench figures`` all draw the same figure and only its look changes.

Colours carry meaning and keep it across figures: ``style.colour("correct")`` is the same in the
histogram and in the trajectory; a method's controls are drawn in ``style.colour("control")``.

Example:
    >>> import plotly.graph_objects as go
    >>> fig = PAPER.finish(go.Figure(), title="hidden in a paper", x="k")
    >>> fig.layout.title.text is None, fig.layout.font.size, fig.layout.colorway[0]
    (True, 16, '#0072B2')
    >>> SCREEN.finish(go.Figure(), title="shown").layout.title.text
    'shown'
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

# Okabe-Ito, ordered so the first colours stay apart in greyscale too; black last.
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
                              "#000000")
# plotly's own qualitative palette, the screen default.
PLOTLY: tuple[str, ...] = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
                           "#FF97FF", "#FECB52")
# Meanings that keep one colour in every figure: palette positions, or a fixed grey for controls.
ROLES: dict[str, int | str] = {"correct": 0, "method": 0, "incorrect": 1, "signal": 0, "magnitude": 2,
                               "p_end": 3, "failure": 3, "detected": 4, "baseline": 2, "control": "#8C8C8C",
                               "chance": "#B0B0B0"}


@dataclass(frozen=True)
class FigureStyle:
    """Screen or paper.

    Attributes:
        paper: larger fonts, the Okabe-Ito palette, no titles, a white template with axis lines.
    """

    paper: bool = False

    @property
    def palette(self) -> tuple[str, ...]:
        return OKABE_ITO if self.paper else PLOTLY

    @property
    def font_size(self) -> int:
        return 16 if self.paper else 12

    @property
    def line_width(self) -> float:
        return 2.5 if self.paper else 2.0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in layout pixels of an exported figure."""
        return (640, 420) if self.paper else (900, 520)

    def colour(self, key: int | str) -> str:
        """A palette colour by position, or the colour of a role (``"correct"``, ``"control"``, ...)."""
        role = ROLES.get(key, key) if isinstance(key, str) else key
        if isinstance(role, str):
            if not role.startswith("#"):
                raise ValueError(f"unknown colour role {key!r}; use an int or one of {sorted(ROLES)}")
            return role
        return self.palette[role % len(self.palette)]

    def band(self, key: int | str, alpha: float = 0.2) -> str:
        """The colour of ``key`` as a translucent ``rgba`` fill (CI bands)."""
        h = self.colour(key).lstrip("#")
        r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
        return f"rgba({r},{g},{b},{alpha})"

    def finish(self, fig: go.Figure, title: str | None = None, x: str | None = None, y: str | None = None,
               ) -> go.Figure:
        """Applies the style to ``fig`` (template, fonts, palette, title unless paper, axis titles)."""
        fig.update_layout(
            template="simple_white" if self.paper else "plotly_white",
            font={"size": self.font_size, "family": "Arial, Helvetica, sans-serif"},
            colorway=list(self.palette),
            title={"text": None if self.paper else title},
            legend={"font": {"size": self.font_size - 2}},
            margin={"l": 70, "r": 30, "t": 30 if self.paper else 60, "b": 60},
        )
        if x is not None:
            fig.update_xaxes(title_text=x)
        if y is not None:
            fig.update_yaxes(title_text=y)
        return fig


SCREEN = FigureStyle()
PAPER = FigureStyle(paper=True)
