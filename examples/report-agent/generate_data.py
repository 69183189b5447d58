"""Writes files/data/sales.csv: 24 months of sales for four regions, the same bytes every time.

Each region has its own size, growth rate and seasonality, plus seeded noise, so the report has
something to say (a best month, a fastest-growing region, a region that shrank).
"""

import csv
import math
import os
import random

REGIONS = {
    # name: (monthly revenue at the start, yearly growth, seasonal swing, average order value)
    "North": (182_000, 0.14, 0.18, 412.0),
    "South": (141_000, 0.22, 0.10, 356.0),
    "East": (205_000, 0.04, 0.25, 498.0),
    "West": (118_000, -0.06, 0.12, 287.0),
}
MONTHS = [f"{year}-{month:02d}" for year in (2023, 2024) for month in range(1, 13)]


def main():
    rng = random.Random(20240131)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "data", "sales.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["month", "region", "orders", "units", "revenue"])
        for i, month in enumerate(MONTHS):
            for region, (start, growth, swing, order_value) in REGIONS.items():
                trend = (1 + growth) ** (i / 12)
                # Peaks in November/December, dips in May/June.
                season = 1 + swing * math.sin((i % 12 - 7.5) * math.pi / 6)
                revenue = start * trend * season * rng.uniform(0.93, 1.07)
                orders = max(1, round(revenue / (order_value * rng.uniform(0.95, 1.05))))
                units = round(orders * rng.uniform(2.1, 3.4))
                writer.writerow([month, region, orders, units, f"{revenue:.2f}"])


if __name__ == "__main__":
    main()
