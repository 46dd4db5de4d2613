"""What the catalog says of past runs: stage times and speed, cache hits, retries, failures, throughput.

Pure compute over the catalog's ``stage_runs``, ``files`` and ``artifacts`` tables (pandas frames in,
frames, figures and documents out), shared by ``voxflow report`` (a self-contained HTML file and the same
as a Prefect Markdown artifact) and the ``pipeline_analytics`` notebook. Each stage run's row says which
input it ran on (``input_sha256``); following ``artifacts.input_sha256`` back to ``files.sha256`` names
the source file it came from and its duration, so a stage's speed is audio seconds per second of compute
(× real time).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from voxflow.tasks.kit.markdown import markdown_text

DOMINANT_SHARE = 0.5  # a stage taking this share of the compute time gets a recommendation
SLOWEST_FILES = 10
ADVICE = {  # stage: what speeds it up, in a user's terms
    "diarize": "run it on a GPU; pass --num-speakers when the count is known; pyannote's embedding step is most of it",
    "transcribe": "a GPU, or --backend faster-whisper (int8 on CPU), a smaller --model, --beam-size 1",
    "separate": "a GPU; run --separate only on files with music or effects under the speech",
    "denoise": "a GPU; run --denoise only on noisy files",
    "synthesize": "a GPU (Qwen3-TTS is far slower than real time on a CPU); shorter lines batch better",
    "enhance": "a GPU; skip the 48 kHz super-resolution where 24 kHz is enough",
    "line_check": "a GPU for its Whisper and speaker-embedding checks; fewer regenerations (max attempts)",
    "ingest": "more parallel files (--jobs): it is I/O and decoding bound",
}


@dataclass(frozen=True)
class Analysis:
    """The tables of a report, each a DataFrame (empty when there is nothing to show)."""

    since: datetime
    until: datetime
    runs: pd.DataFrame  # one row per stage run: the stage_runs row + file, audio_s
    stages: pd.DataFrame  # per stage: runs, computed, cache hits, hit rate, retries, failed, compute s, × real time
    failures: pd.DataFrame  # per failed task run (its last attempt): time, file, stage, error class, message
    slowest: pd.DataFrame  # files by compute time
    throughput: pd.DataFrame  # per time bucket: stage runs computed, audio minutes ingested
    recommendation: str | None

    @property
    def empty(self) -> bool:
        return self.runs.empty


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``90m``, ``24h``, ``7d`` (ago) or an ISO 8601 time (local time when it names no zone)."""
    now = now or datetime.now(UTC)
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return now - timedelta(**{units[text[-1]]: float(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (90m, 24h, 7d) or an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.astimezone()


def file_index(files: pd.DataFrame, artifacts: pd.DataFrame) -> dict[str, tuple[str, float | None]]:
    """sha256 of every source and audio artifact -> (source file name, its duration in seconds)."""
    index: dict[str, tuple[str, float | None]] = {
        row.sha256: (row.source_name, row.duration_s) for row in files.itertuples() if row.sha256
    }
    parents = {row.sha256: row.input_sha256 for row in artifacts.itertuples() if row.sha256 and row.input_sha256}
    for sha in parents:
        seen, cursor = set(), sha
        while cursor in parents and cursor not in index and cursor not in seen:  # back to a source file
            seen.add(cursor)
            cursor = parents[cursor]
        if cursor in index and sha not in index:
            index[sha] = index[cursor]
    return index


def with_files(runs: pd.DataFrame, files: pd.DataFrame, artifacts: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with every row's ``file`` and ``audio_s``: as recorded, else found from its input's sha256
    (rows written before voxflow recorded them)."""
    index = file_index(files, artifacts)
    found = [index.get(sha, (f"{sha[:12]}…" if sha else "", None)) for sha in runs["input_sha256"]]
    return runs.assign(
        file=runs["file"].where(runs["file"].notna(), [name for name, _ in found]),
        audio_s=runs["audio_s"].where(runs["audio_s"].notna(), [duration for _, duration in found]).astype(float),
    )


def analyse(
    stage_runs: pd.DataFrame, files: pd.DataFrame, artifacts: pd.DataFrame, since: datetime, until: datetime
) -> Analysis:
    """The report's tables from the catalog's frames, for the stage runs started in [since, until)."""
    runs = with_files(
        stage_runs[(stage_runs["started_at"] >= since) & (stage_runs["started_at"] < until)], files, artifacts
    )
    stages = stage_table(runs)
    return Analysis(
        since, until, runs, stages, failure_table(runs), slowest_files(runs), throughput(runs), recommend(stages)
    )


def _computed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["status"] == "completed") & ~runs["cache_hit"].fillna(False).astype(bool)]


def stage_table(runs: pd.DataFrame) -> pd.DataFrame:
    columns = ["stage", "runs", "computed", "cache_hits", "hit_rate", "retries", "failed", "compute_s", "median_s"]
    if runs.empty:
        return pd.DataFrame(columns=[*columns, "x_real_time", "share"])
    computed = _computed(runs)
    rows = []
    for stage, group in runs.groupby("stage", sort=False):
        done = computed[computed["stage"] == stage]
        hits = int(group["cache_hit"].fillna(False).astype(bool).sum())
        timed = done[done["audio_s"].notna() & (done["duration_s"] > 0)]
        rows.append(
            {
                "stage": stage,
                "runs": group["task_run_id"].nunique(),
                "computed": len(done),
                "cache_hits": hits,
                "hit_rate": hits / max(hits + len(done), 1),
                "retries": int((group["attempt"] > 1).sum()),
                "failed": int((group["status"] == "failed").sum()),
                "compute_s": float(done["duration_s"].sum()),
                "median_s": float(done["duration_s"].median()) if len(done) else float("nan"),
                "x_real_time": float(timed["audio_s"].sum() / timed["duration_s"].sum())
                if len(timed)
                else float("nan"),
            }
        )
    table = pd.DataFrame(rows)
    total = table["compute_s"].sum()
    table["share"] = table["compute_s"] / total if total > 0 else 0.0
    return table.sort_values("compute_s", ascending=False, ignore_index=True)


def failure_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each failed task run once, at its last attempt: when, which file and stage, the error's class and message."""
    columns = ["time", "file", "stage", "attempts", "error_class", "error_message"]
    failed = runs[runs["status"] == "failed"].sort_values("attempt")
    if failed.empty:
        return pd.DataFrame(columns=columns)
    last = failed.groupby("task_run_id", sort=False).tail(1)
    table = last.assign(time=last["started_at"].dt.strftime("%Y-%m-%d %H:%M:%S"), attempts=last["attempt"])
    return table[columns].sort_values("time", ascending=False, ignore_index=True)


def slowest_files(runs: pd.DataFrame, count: int = SLOWEST_FILES) -> pd.DataFrame:
    computed = _computed(runs)
    if computed.empty:
        return pd.DataFrame(columns=["file", "compute_s", "audio_s", "stages"])
    per_file = computed.groupby("file").agg(
        compute_s=("duration_s", "sum"),
        audio_s=("audio_s", "max"),
        stages=("stage", lambda s: ", ".join(dict.fromkeys(s))),
    )
    return per_file.sort_values("compute_s", ascending=False).head(count).reset_index()


def throughput(runs: pd.DataFrame) -> pd.DataFrame:
    """Per time bucket (minutes, hours or days, as the span asks): stage runs computed and audio minutes ingested."""
    computed = _computed(runs)
    if computed.empty:
        return pd.DataFrame(columns=["bucket", "stage_runs", "audio_min"])
    span = computed["started_at"].max() - computed["started_at"].min()
    freq = "min" if span <= pd.Timedelta(hours=2) else "h" if span <= pd.Timedelta(days=3) else "D"
    buckets = computed["started_at"].dt.floor(freq)
    ingested = computed["stage"] == "ingest"
    table = pd.DataFrame(
        {
            "stage_runs": computed.groupby(buckets).size(),
            "audio_min": computed[ingested].groupby(buckets[ingested])["audio_s"].sum() / 60,
        }
    ).fillna(0.0)
    return table.rename_axis("bucket").reset_index()


def recommend(stages: pd.DataFrame) -> str | None:
    """When one stage takes most of the compute time: which, how much, and what speeds it up."""
    if stages.empty or stages["compute_s"].sum() <= 0:
        return None
    top = stages.iloc[0]
    if top["share"] < DOMINANT_SHARE:
        return None
    advice = ADVICE.get(top["stage"], "a GPU, or fewer files through it")
    return f"{top['stage']} takes {top['share']:.0%} of the compute time ({top['compute_s']:.0f} s): {advice}."


# ---- figures -------------------------------------------------------------------------------------------


def figures(analysis: Analysis) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by title (none for an empty analysis)."""
    if analysis.empty:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plots: dict[str, bytes] = {}
    stages = analysis.stages

    def save(title: str, figure) -> None:  # the title is the document's heading above the image
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        plots[title] = buffer.getvalue()

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.barh(stages["stage"], stages["compute_s"], color="#4c72b0")
    left.set_xlabel("compute time (s)")
    left.invert_yaxis()
    right.barh(stages["stage"], stages["x_real_time"].fillna(0), color="#55a868")
    right.set_xlabel("speed (× real time; > 1 is faster than the audio)")
    right.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    right.invert_yaxis()
    save("Stage durations and speed", figure)

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.barh(stages["stage"], 100 * stages["hit_rate"], color="#8172b2")
    left.set_xlim(0, 100)
    left.set_xlabel("cache hit rate (%)")
    left.invert_yaxis()
    failed = analysis.failures.groupby(["stage", "error_class"]).size().unstack(fill_value=0)
    if failed.empty:
        right.text(0.5, 0.5, "no failures", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    else:
        failed.plot.barh(stacked=True, ax=right)
        right.set_xlabel("failed task runs (by error class)")
    retried = stages[stages["retries"] > 0]
    if not retried.empty:
        left.set_title("retries: " + ", ".join(f"{r.stage} {r.retries}" for r in retried.itertuples()), fontsize=9)
    save("Cache hits, retries and failures", figure)

    flow = analysis.throughput
    figure, axis = plt.subplots(figsize=(10, 3.2))
    axis.bar(flow["bucket"], flow["stage_runs"], width=_bar_width(flow["bucket"]), color="#4c72b0", label="stage runs")
    axis.set_ylabel("stage runs computed")
    twin = axis.twinx()
    twin.plot(flow["bucket"], flow["audio_min"], color="#c44e52", marker="o", label="audio ingested (min)")
    twin.set_ylabel("audio ingested (min)")
    figure.autofmt_xdate()
    save("Throughput over time", figure)

    slowest = analysis.slowest
    if not slowest.empty:
        figure, axis = plt.subplots(figsize=(10, 0.4 * len(slowest) + 1.2))
        axis.barh(slowest["file"], slowest["compute_s"], color="#dd8452")
        axis.invert_yaxis()
        axis.set_xlabel("compute time over all stages (s)")
        save("Slowest files", figure)
    return plots


def _bar_width(buckets: pd.Series) -> float:
    """A bar's width in days (matplotlib's date unit): most of the gap between buckets."""
    if len(buckets) < 2:
        return 1 / 24 / 60 * 0.8
    return float((buckets.diff().dropna().min()).total_seconds()) / 86400 * 0.8


# ---- documents -----------------------------------------------------------------------------------------


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.copy()
    for column in ("hit_rate", "share"):
        if column in shown:
            shown[column] = [f"{v:.0%}" for v in shown[column]]
    return shown.round(2)


def headline(analysis: Analysis) -> str:
    runs = analysis.runs
    if analysis.empty:
        return f"no stage runs between {analysis.since:%Y-%m-%d %H:%M} and {analysis.until:%Y-%m-%d %H:%M} UTC"
    files = runs["file"].nunique()
    failed = len(analysis.failures)
    return (
        f"{len(runs)} stage runs on {files} file(s), {analysis.since:%Y-%m-%d %H:%M} to {analysis.until:%Y-%m-%d %H:%M}"
        f" UTC: {int((runs['cache_hit'] == True).sum())} cache hits, {failed} failed task run(s)"  # noqa: E712
    )


def to_html(analysis: Analysis, plots: dict[str, bytes]) -> str:
    """One self-contained HTML page: the tables, the plots inlined as PNG data, the recommendation."""
    parts = [f"<h1>voxflow report</h1><p>{html.escape(headline(analysis))}</p>"]
    if analysis.recommendation:
        parts.append(f"<p class='advice'><b>Recommendation:</b> {html.escape(analysis.recommendation)}</p>")
    sections = (
        ("Stages", analysis.stages),
        ("Failures", analysis.failures),
        ("Slowest files", analysis.slowest),
    )
    parts += [f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{_data_uri(p)}'>" for t, p in plots.items()]
    for title, frame in sections:
        body = _rounded(frame).to_html(index=False, escape=True, na_rep="") if len(frame) else "<p>none</p>"
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}img{max-width:100%;display:block}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        ".advice{background:#fff3cd;padding:.6em;border-radius:4px}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>voxflow report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "none"
    shown = _rounded(frame)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        cells = ("" if pd.isna(v) else markdown_text(str(v)).replace("\n", " ") for v in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(analysis: Analysis, plots: dict[str, bytes]) -> str:
    """The report as Markdown (a Prefect artifact): the same tables, the plots as inline PNG images."""
    parts = [f"# voxflow report\n\n{headline(analysis)}"]
    if analysis.recommendation:
        parts.append(f"**Recommendation:** {analysis.recommendation}")
    parts += [f"## {title}\n\n![{title}]({_data_uri(png)})" for title, png in plots.items()]
    for title, frame in (
        ("Stages", analysis.stages),
        ("Failures", analysis.failures),
        ("Slowest files", analysis.slowest),
    ):
        parts.append(f"## {title}\n\n{_markdown_table(frame)}")
    return "\n\n".join(parts)
