"""Monthly sales report: reads data/sales.csv, writes report.md, chart.svg and summary.json.

Runs inside a Paddock sandbox (python3, standard library only). The run's input, if any, is
read from /inputs/input.json, for example {"region": "north"} to report on one region, and may
set "title". Progress goes to stdout as `::paddock::` marker lines, which Paddock records as
events; everything written to /outputs becomes the run's artifacts.

Outside a sandbox, PADDOCK_INPUT and PADDOCK_OUTPUTS override the two paths.
"""

import csv
import json
import os
import sys
from collections import defaultdict
from datetime import datetime, timezone
from html import escape

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_FILE = os.path.join(HERE, "data", "sales.csv")
INPUT_FILE = os.environ.get("PADDOCK_INPUT", "/inputs/input.json")
OUTPUTS_DIR = os.environ.get("PADDOCK_OUTPUTS", "/outputs")
MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def emit(event_type, data):
    """Sends a structured event to Paddock (a marker line on stdout)."""
    print("::paddock::" + json.dumps({"type": event_type, "data": data}), flush=True)


def progress(step, pct):
    emit("progress", {"step": step, "pct": pct})


def fail(message, code=2):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def money(value):
    return f"-${-value:,.0f}" if value < 0 else f"${value:,.0f}"


def pct(value):
    return "n/a" if value is None else f"{value:+.1f}%"


def change(new, old):
    return None if not old else (new - old) / old * 100


def read_options():
    """The run's input: a JSON object with optional "region" and "title"; null, empty or absent is none."""
    try:
        with open(INPUT_FILE, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        fail(f"{INPUT_FILE} is not valid JSON: {err}")
    if options is None:
        return {}
    if not isinstance(options, dict):
        fail('the input must be a JSON object such as {"region": "north"}')
    unknown = sorted(set(options) - {"region", "title"})
    if unknown:
        print(f"warning: ignoring unknown input keys: {', '.join(unknown)}", file=sys.stderr, flush=True)
    for key in ("region", "title"):
        if key in options and not isinstance(options[key], str):
            fail(f'input "{key}" must be a string')
    return options


def read_rows(path):
    """Rows of the CSV with parsed numbers; malformed rows are reported and skipped."""
    rows, skipped = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, raw in enumerate(csv.DictReader(f), start=2):
            try:
                datetime.strptime(raw["month"], "%Y-%m")
                rows.append(
                    {
                        "month": raw["month"],
                        "region": raw["region"].strip(),
                        "orders": int(raw["orders"]),
                        "units": int(raw["units"]),
                        "revenue": float(raw["revenue"]),
                    }
                )
            except (KeyError, TypeError, ValueError):
                skipped += 1
                print(f"warning: skipping malformed line {line_no}", file=sys.stderr, flush=True)
    return rows, skipped


def totals(rows):
    revenue = sum(r["revenue"] for r in rows)
    orders = sum(r["orders"] for r in rows)
    return {
        "revenue": round(revenue, 2),
        "orders": orders,
        "units": sum(r["units"] for r in rows),
        "avg_order_value": round(revenue / orders, 2) if orders else 0,
    }


def by_month(rows):
    months = defaultdict(float)
    for r in rows:
        months[r["month"]] += r["revenue"]
    return [{"month": m, "revenue": round(months[m], 2)} for m in sorted(months)]


def year_over_year(monthly):
    """The last 12 months against the 12 before them, when the data covers both."""
    if len(monthly) < 24:
        return None
    last = sum(m["revenue"] for m in monthly[-12:])
    prior = sum(m["revenue"] for m in monthly[-24:-12])
    return round(change(last, prior), 2)


def summarize(rows, scope):
    monthly = by_month(rows)
    best = max(monthly, key=lambda m: m["revenue"])
    worst = min(monthly, key=lambda m: m["revenue"])
    total = totals(rows)
    regions = []
    for region in sorted({r["region"] for r in rows}):
        region_rows = [r for r in rows if r["region"] == region]
        region_monthly = by_month(region_rows)
        region_total = totals(region_rows)
        region_best = max(region_monthly, key=lambda m: m["revenue"])
        regions.append(
            {
                "region": region,
                **region_total,
                "share_pct": round(region_total["revenue"] / total["revenue"] * 100, 1),
                "avg_monthly_revenue": round(region_total["revenue"] / len(region_monthly), 2),
                "best_month": region_best,
                "growth_yoy_pct": year_over_year(region_monthly),
            }
        )
    regions.sort(key=lambda r: r["revenue"], reverse=True)
    growing = [r for r in regions if r["growth_yoy_pct"] is not None]
    return {
        "scope": scope,
        "period": {"from": monthly[0]["month"], "to": monthly[-1]["month"], "months": len(monthly)},
        "totals": total,
        "best_month": best,
        "worst_month": worst,
        "growth_yoy_pct": year_over_year(monthly),
        "fastest_growing_region": max(growing, key=lambda r: r["growth_yoy_pct"])["region"] if growing else None,
        "regions": regions,
        "monthly": monthly,
    }


def nice_step(maximum, ticks=5):
    """A round axis step (1, 2, 2.5 or 5 times a power of ten) giving about `ticks` gridlines."""
    raw = maximum / ticks
    power = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 1
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def short_money(value):
    if value >= 1_000_000:
        return f"${value / 1_000_000:.1f}M"
    if value >= 1_000:
        return f"${value / 1_000:.0f}k"
    return f"${value:.0f}"


def chart_svg(summary):
    """A bar chart of revenue per month, one color per year, as standalone SVG."""
    monthly = summary["monthly"]
    width, height = 860, 420
    left, right, top, bottom = 70, 20, 56, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    step = nice_step(max(m["revenue"] for m in monthly))
    axis_max = step * -(-max(m["revenue"] for m in monthly) // step)
    slot = plot_w / len(monthly)
    bar_w = slot * 0.72
    years = sorted({m["month"][:4] for m in monthly})
    palette = ["#9db4d6", "#2f6db5", "#1b3f6e", "#6c8ebf"]
    color = {year: palette[i % len(palette)] for i, year in enumerate(years)}

    title = f"Revenue by month: {summary['scope']}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="30" font-size="18" font-weight="bold" fill="#1f2933">{escape(title)}</text>',
    ]
    value = 0
    while value <= axis_max:
        y = top + plot_h - value / axis_max * plot_h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e4e7eb"/>')
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#52606d">'
            f"{short_money(value)}</text>"
        )
        value += step
    for i, m in enumerate(monthly):
        year, month = m["month"].split("-")
        h = m["revenue"] / axis_max * plot_h
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color[year]}">'
            f"<title>{m['month']}: {money(m['revenue'])}</title></rect>"
        )
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" font-size="10" text-anchor="middle" '
            f'fill="#52606d">{MONTH_NAMES[int(month) - 1][0]}</text>'
        )
    for year in years:
        indices = [i for i, m in enumerate(monthly) if m["month"].startswith(year)]
        center = left + (indices[0] + indices[-1] + 1) / 2 * slot
        parts.append(
            f'<text x="{center:.1f}" y="{top + plot_h + 36}" font-size="12" font-weight="bold" '
            f'text-anchor="middle" fill="{color[year]}">{year}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#9aa5b1"/>'
    )
    best = summary["best_month"]
    parts.append(
        f'<text x="{width - right}" y="30" font-size="12" text-anchor="end" fill="#52606d">'
        f"best month {escape(month_label(best['month']))}: {money(best['revenue'])}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def month_label(month):
    year, number = month.split("-")
    return f"{MONTH_NAMES[int(number) - 1]} {year}"


def report_md(summary, title, skipped):
    t = summary["totals"]
    period = summary["period"]
    lines = [
        f"# {title}",
        "",
        f"Scope: **{summary['scope']}**, {month_label(period['from'])} to {month_label(period['to'])} "
        f"({period['months']} months).",
        "",
        "## Headlines",
        "",
        f"- Revenue: **{money(t['revenue'])}** from {t['orders']:,} orders ({t['units']:,} units), "
        f"average order {money(t['avg_order_value'])}.",
        f"- Last 12 months against the 12 before: **{pct(summary['growth_yoy_pct'])}**.",
        f"- Best month: **{month_label(summary['best_month']['month'])}** "
        f"({money(summary['best_month']['revenue'])}); weakest: {month_label(summary['worst_month']['month'])} "
        f"({money(summary['worst_month']['revenue'])}).",
    ]
    if summary["fastest_growing_region"] and len(summary["regions"]) > 1:
        lines.append(f"- Fastest growing region: **{summary['fastest_growing_region']}**.")
    shrinking = [r["region"] for r in summary["regions"] if (r["growth_yoy_pct"] or 0) < 0]
    if shrinking:
        lines.append(f"- Shrinking year over year: {', '.join(shrinking)}.")
    lines += [
        "",
        "## Regions",
        "",
        "| Region | Revenue | Share | Orders | Avg / month | Best month | Growth (YoY) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in summary["regions"]:
        lines.append(
            f"| {r['region']} | {money(r['revenue'])} | {r['share_pct']:.1f}% | {r['orders']:,} | "
            f"{money(r['avg_monthly_revenue'])} | {month_label(r['best_month']['month'])} | "
            f"{pct(r['growth_yoy_pct'])} |"
        )
    lines += ["", "## Revenue by month", "", "![Revenue by month](chart.svg)", ""]
    lines += ["| Month | Revenue | vs. a year before |", "|---|---:|---:|"]
    monthly = summary["monthly"]
    for i, m in enumerate(monthly):
        before = monthly[i - 12]["revenue"] if i >= 12 else None
        lines.append(f"| {month_label(m['month'])} | {money(m['revenue'])} | {pct(change(m['revenue'], before))} |")
    lines += ["", "---", ""]
    note = f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from data/sales.csv"
    if skipped:
        note += f" ({skipped} malformed rows skipped)"
    lines.append(note + ".")
    return "\n".join(lines) + "\n"


def write(name, text):
    with open(os.path.join(OUTPUTS_DIR, name), "w", encoding="utf-8") as f:
        f.write(text)


def main():
    options = read_options()
    progress("reading data", 10)
    rows, skipped = read_rows(DATA_FILE)
    if not rows:
        fail(f"no usable rows in {DATA_FILE}", 1)
    regions = sorted({r["region"] for r in rows})
    print(f"loaded {len(rows)} rows: {len(regions)} regions, {len({r['month'] for r in rows})} months", flush=True)

    scope = "all regions"
    wanted = options.get("region", "").strip()
    if wanted and wanted.lower() != "all":
        match = [r for r in regions if r.lower() == wanted.lower()]
        if not match:
            fail(f'unknown region "{wanted}"; the data has: {", ".join(regions)}')
        scope = match[0]
        rows = [r for r in rows if r["region"] == scope]
        print(f"filtered to region {scope}: {len(rows)} rows", flush=True)
    progress("computing summary", 40)
    summary = summarize(rows, scope)

    os.makedirs(OUTPUTS_DIR, exist_ok=True)
    progress("drawing chart", 65)
    write("chart.svg", chart_svg(summary))
    progress("writing report", 85)
    title = options.get("title") or (
        "Sales report" if scope == "all regions" else f"Sales report: {scope} region"
    )
    write("report.md", report_md(summary, title, skipped))
    write("summary.json", json.dumps(summary, indent=2) + "\n")

    t = summary["totals"]
    emit(
        "summary",
        {
            "scope": scope,
            "revenue": t["revenue"],
            "growth_yoy_pct": summary["growth_yoy_pct"],
            "best_month": summary["best_month"]["month"],
        },
    )
    progress("done", 100)
    print(f"{title} ({summary['period']['from']} to {summary['period']['to']})")
    print(f"  revenue      {money(t['revenue'])} ({pct(summary['growth_yoy_pct'])} year over year)")
    print(f"  best month   {month_label(summary['best_month']['month'])}: {money(summary['best_month']['revenue'])}")
    if len(summary["regions"]) > 1:
        top = summary["regions"][0]
        print(f"  top region   {top['region']}: {money(top['revenue'])} ({top['share_pct']:.0f}% of revenue)")
    print(f"  wrote report.md, chart.svg and summary.json to {OUTPUTS_DIR}")


if __name__ == "__main__":
    main()
