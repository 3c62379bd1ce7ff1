"""Self-contained HTML reports: ``render_live(doc)`` (``tailsift report --html``) and
``render_simulation(doc)`` (``tailsift simulate --html``), each one HTML file that works offline.

A document is a plain JSON-able dict (the simulation's is what ``tailsift simulate --json``
writes; the live one is built by ``pipeline.htmlreport.live``). The page inlines plotly.js once,
draws every chart with Plotly, and embeds the document itself as
``<script type="application/json" id="tailsift-data">`` so a reader (or a test) gets the exact
numbers the charts were drawn from."""

from pipeline.htmlreport.page import render_live, render_simulation

__all__ = ["render_live", "render_simulation"]
