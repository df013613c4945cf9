"""Tables as small self-contained HTML pages, which Snakemake's report shows inline (a CSV there is only
a download): the numbers a reader wants beside the figures, with the CSVs still the files to analyse."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; color: #222; }
h2 { font-size: 15px; margin: 18px 0 4px; }
p { max-width: 70em; margin: 2px 0 8px; color: #444; }
table { border-collapse: collapse; margin-bottom: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
"""


def _cell(value) -> tuple[str, str]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "", ""
    if isinstance(value, float):
        return f"{value:.4g}", ""
    if isinstance(value, (int,)) or hasattr(value, "dtype"):
        return html.escape(str(value)), ""
    return html.escape(str(value)), "text"


def table_html(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    columns = [c for c in (columns or df.columns) if c in df.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for record in df[columns].itertuples(index=False):
        cells = []
        for value in record:
            text, cls = _cell(value)
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_page(path: str | Path, title: str, sections: Sequence[tuple[str, str, pd.DataFrame, Sequence[str] | None]]) -> None:
    """One page of (heading, explanation, table, columns or None for all) sections, escaped, no scripts,
    nothing loaded from elsewhere."""
    body = [f"<h1 style='font-size:17px'>{html.escape(title)}</h1>"]
    for heading, note, df, columns in sections:
        body.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(note)}</p>{table_html(df, columns)}")
    Path(path).write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title)
                          + f"</title><style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>",
                          encoding="utf-8")
