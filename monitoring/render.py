"""A picture of the dashboard without Grafana: every panel drawn from a real Prometheus' answers.

``python -m monitoring.render --data ../shared/data/cifar10-jpeg.tar.gz`` starts a server and a
Prometheus scraping it, replays a short CIFAR-10-C stream through the REST API, and writes
``monitoring/dashboard_panels.png``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from monitoring.dashboard import PANELS
from monitoring.prometheus import dashboard_expression, query_range

OUT = Path(__file__).with_name("dashboard_panels.png")


def render_panels(prometheus: str, start: float, end: float, path: Path, rate: str = "15s") -> int:
    """Draw every panel's queries over [start, end]; returns how many series were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(PANELS) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    drawn = 0
    step = max(1.0, (end - start) / 200)
    for axis, (title, unit, queries, _) in zip(axes.flat, PANELS, strict=False):
        for expression, legend in queries:
            for series in query_range(prometheus, dashboard_expression(expression, rate), start, end, step):
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = legend
                for key, value in series["metric"].items():
                    label = label.replace("{{" + key + "}}", value)
                axis.plot(times, values, label=label, linewidth=1.4)
                drawn += 1
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("seconds", fontsize=8)
        axis.set_ylabel(unit, fontsize=8)
        axis.tick_params(labelsize=7)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    for axis in list(axes.flat)[len(PANELS) :]:
        axis.axis("off")
    figure.suptitle(
        "tta-server dashboard drawn from Prometheus query results: a CIFAR-10-C replay (tent) through the REST API, "
        "then labelled fog images with feedback"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return drawn


def wait_for_scrapes(prometheus: str, count: int, timeout_s: float = 60) -> None:
    from monitoring.prometheus import scrapes

    deadline = time.monotonic() + timeout_s
    while scrapes(prometheus) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"Prometheus stored fewer than {count} scrapes in {timeout_s:.0f} s")
        time.sleep(0.5)


def main() -> None:
    from monitoring.demo import build_small_cifar10c, labelled_traffic, replay_through
    from monitoring.prometheus import running_prometheus, scrapes
    from tests.server_harness import running_server
    from tta_server import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 (e.g. ../shared/data/cifar10-jpeg.tar.gz)")
    parser.add_argument("--per-domain", type=int, default=256, help="test images per corruption and severity")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = build_small_cifar10c(args.data, Path(tmp) / "c10c", n=args.per_domain)
        # a periodic guard, so the guard-actions panel has something to show
        settings = Settings(
            default_adapter="tent",
            min_adapt_batch=16,
            snapshot_dir=Path(tmp) / "snapshots",
            guard={"reset_every_steps": 20},
            signal_window_steps=5,
        )
        with running_server(settings) as server, running_prometheus(server.removeprefix("http://")) as prometheus:
            wait_for_scrapes(prometheus, 2)  # a baseline before the traffic, so rates start from it
            start = time.time()
            replay_through(server, data)
            labelled_traffic(server, data)
            wait_for_scrapes(prometheus, scrapes(prometheus) + 3)  # the last of the traffic scraped
            end = time.time()
            print(f"{scrapes(prometheus)} scrapes; {render_panels(prometheus, start, end, args.out)} series drawn")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
