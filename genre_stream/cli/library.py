"""`genre-stream library ...`: scan, cluster, similar, export, errors, label.

Only argument handling and presentation live here; the work is in ``genre_stream.library``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from ..common.progress import Progress
from ..library.db import LibraryDB, LibraryError, default_db_path
from .options import hop_option, load_engine, model_options

if TYPE_CHECKING:
    from ..library.cluster import Clustering


def _db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Library database (default: {default_db_path()}, under $XDG_DATA_HOME).",
    )(f)


@contextlib.contextmanager
def _open_db(db_path: Path | None, must_exist: bool = False) -> Iterator[LibraryDB]:
    """The database, with library errors turned into a clean CLI error naming the file."""
    path = db_path or default_db_path()
    if must_exist and not path.exists():
        raise click.ClickException(f"{path}: no library database yet; run `genre-stream library scan DIR` first")
    try:
        with LibraryDB(path) as db:
            yield db
    except LibraryError as exc:
        raise click.ClickException(str(exc)) from exc


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


@click.group()
def library() -> None:
    """Organise a music collection: index it, cluster it, find similar tracks."""


@library.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_db_option
@model_options
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Analysis processes (one core each).")
@hop_option
@click.option("--retry-errors", is_flag=True, help="Try unchanged files that failed in an earlier scan again.")
@click.option("--json", "as_json", is_flag=True, help="Print the scan report as JSON.")
def scan(paths: tuple[Path, ...], db_path: Path | None, model_path: Path | None, device: str, workers: int,
         hop_seconds: float, retry_errors: bool, as_json: bool) -> None:
    """Index the audio files under PATHS (new and changed files only; deleted ones are dropped).

    Every finished track is committed at once: Ctrl-C (or SIGTERM) stops the scan
    and the next scan resumes with the files not yet indexed. Files that cannot be
    decoded are recorded (see `genre-stream library errors`) and make the exit status 1.
    """
    from ..library.scan import Outcome, ScanConfig
    from ..library.scan import scan as run_scan
    from ..model.session import ModelError

    config = ScanConfig(model_path, device, workers, hop_seconds, retry_errors)
    with _open_db(db_path) as db, contextlib.ExitStack() as stack, sigterm_as_interrupt():
        bar: list[Progress] = []

        def on_plan(n: int) -> None:
            if n:
                bar.append(stack.enter_context(Progress(n, "scanning").shown()))

        def on_outcome(outcome: Outcome) -> None:  # failures are logged by the scanner, above the bar
            if bar:
                bar[0].advance(item=Path(outcome.path).name)

        try:
            report = run_scan(db, list(paths), config, on_plan, on_outcome)
        except ModelError as exc:
            raise click.ClickException(str(exc)) from exc
        total = db.count()
    summary = {
        "found": report.found,
        "analysed": len(report.analysed),
        "reused": len(report.reused),
        "unchanged": report.unchanged,
        "removed": len(report.removed),
        "failed": len(report.failed),
        "skipped_errors": report.skipped_errors,
        "interrupted": report.interrupted,
        "tracks_in_library": total,
        "db": str(db.path),
    }
    if as_json:
        _echo_json(summary | {"errors": [{"path": p, "reason": r} for p, r in report.failed]})
    else:
        click.echo(
            f"{report.found} audio files: {len(report.analysed)} analysed, {len(report.reused)} reused (same content), "
            f"{report.unchanged} unchanged, {len(report.removed)} removed, {len(report.failed)} failed; "
            f"{total} tracks in {db.path}"
        )
        if report.failed or report.skipped_errors:
            click.echo("unreadable files are listed by `genre-stream library errors`", err=True)
    if report.interrupted:
        click.echo("scan interrupted; run it again to finish", err=True)
        sys.exit(130)
    if report.failed:  # as `classify`: a script must see that part of the collection was not indexed
        sys.exit(1)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stop, kill) ends a scan the same orderly way as Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _KChoice(click.ParamType):
    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or str(value).lower() == "auto":
            return None
        try:
            k = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        if k < 1:
            self.fail(f"{k} clusters: give 1 or more", param, ctx)
        return k


@library.command()
@_db_option
@click.option("--k", "k", type=_KChoice(), default="auto", show_default=True, help="Number of clusters, or 'auto' (best silhouette).")
@click.option("--method", type=click.Choice(["kmeans", "agglomerative"]), default="kmeans", show_default=True)
@click.option("--playlists", "playlist_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for one M3U playlist per cluster (default: 'playlists' beside the database).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a 2-D map of the clusters (PCA) to this image file (.png, .svg, .pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print the clusters (with their tracks) as JSON.")
def cluster(db_path: Path | None, k: int | None, method: str, playlist_dir: Path | None, plot_path: Path | None, as_json: bool) -> None:
    """Group the library by sound, name the groups by genre, write playlists."""
    from ..library.cluster import ClusterConfig, cluster_library, plot_clusters, write_playlists

    with _open_db(db_path, must_exist=True) as db:
        matrix = db.matrix()
        labels = db.labels or []
        try:
            result = cluster_library(matrix, labels, ClusterConfig(k=k, method=method))  # type: ignore[arg-type]
            durations = dict(zip(matrix.paths, matrix.durations.tolist()))
            out_dir = playlist_dir or db.path.parent / "playlists"
            playlists = write_playlists(result, durations, out_dir)
        except LibraryError as exc:
            raise click.ClickException(str(exc)) from exc
    plot_error = None
    if plot_path:
        try:
            plot_clusters(result, plot_path)
        except LibraryError as exc:  # the clusters and playlists stand without the map
            plot_error, plot_path = str(exc), None
    if as_json:
        _echo_json({
            "k": result.k,
            "method": result.method,
            "silhouette": result.silhouette,
            "silhouette_by_k": result.silhouettes,
            "clusters": [c.to_dict() | {"playlist": str(p)} for c, p in zip(result.clusters, playlists)],
        })
    else:
        _print_clusters(result, playlists, len(matrix), out_dir, plot_path)
    if plot_error:
        click.echo(f"error: no map drawn: {plot_error}", err=True)
        sys.exit(1)


def _print_clusters(result: Clustering, playlists: list[Path], n_tracks: int, out_dir: Path, plot_path: Path | None) -> None:
    sil = f", silhouette {result.silhouette:.3f}" if result.silhouette is not None else ""
    click.echo(f"{n_tracks} tracks in {result.k} clusters ({result.method}{sil})")
    rows = [("#", "name", "tracks", "mean length", "dominant genres", "playlist")]
    for c, p in zip(result.clusters, playlists):
        genres = ", ".join(f"{g} {share:.0%}" for g, share in c.genres)
        rows.append((str(c.number), c.name, str(len(c.paths)), f"{c.mean_duration:.0f} s", genres, p.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    click.echo(f"playlists in {out_dir}" + (f"; map in {plot_path}" if plot_path else ""))


@library.command()
@click.argument("track", type=click.Path(path_type=Path))
@click.option("-n", "count", type=click.IntRange(1), default=10, show_default=True, help="How many tracks to list.")
@_db_option
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON.")
def similar(track: Path, count: int, db_path: Path | None, model_path: Path | None, device: str, as_json: bool) -> None:
    """The library tracks that sound most like TRACK (a library path or any audio file)."""
    from ..library.similar import SimilarityIndex, resolve_query

    with _open_db(db_path, must_exist=True) as db:
        index = SimilarityIndex(db.matrix())
        query = resolve_query(track, index, db, model_path, device)
        matches = index.nearest(query.vector, count, exclude=query.path)
    if as_json:
        _echo_json({"track": query.path, "genre": query.genre, "in_library": query.in_library,
                    "matches": [m.to_dict() for m in matches]})
        return
    where = "library track" if query.in_library else "analysed now, not in the library"
    click.echo(f"{query.path} ({query.genre}; {where})")
    for rank, m in enumerate(matches, start=1):
        click.echo(f"{rank:3d}. {m.similarity:.3f}  {m.genre:<10} {m.path}")


@library.command()
@_db_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to FILE instead of stdout (replaced atomically).")
def export(db_path: Path | None, fmt: str, output: Path | None) -> None:
    """The whole index: path, stamps, duration, genre, probabilities and embedding per track."""
    from ..common.fsutil import atomic_path
    from ..library.export import export as write_export

    with _open_db(db_path, must_exist=True) as db:
        if output is None:
            write_export(db, fmt, sys.stdout)  # type: ignore[arg-type]
            return
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            n = write_export(db, fmt, fh)  # type: ignore[arg-type]
    click.echo(f"{n} tracks written to {output}", err=True)


@library.command()
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print the errors as JSON.")
def errors(db_path: Path | None, as_json: bool) -> None:
    """Files the scanner could not index, and why."""
    with _open_db(db_path, must_exist=True) as db:
        rows = db.errors()
    if as_json:
        _echo_json([{"path": e.path, "reason": e.reason, "failed_at": e.failed_at} for e in rows])
        return
    if not rows:
        click.echo("no errors recorded")
        return
    for e in rows:
        click.echo(f"{e.path}: {e.reason} ({e.failed_at})")


@library.command("ls")
@click.argument("query", nargs=-1)
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print the matching tracks as JSON.")
def ls(query: tuple[str, ...], db_path: Path | None, as_json: bool) -> None:
    """List the tracks matching QUERY (every term must hold; no query: all tracks).

    \b
    genre:jazz            the model's genre (one of the library's labels)
    artist:miles          substring of the artist tag (title:, path: likewise)
    confidence>0.8        also >=, <, <=; duration>300 in seconds
    live                  a bare word: substring of the path
    """
    from ..library.query import parse_query

    with _open_db(db_path, must_exist=True) as db:
        try:
            parsed = parse_query(query, db.labels or [])
        except LibraryError as exc:
            raise click.UsageError(str(exc)) from exc
        found = [t for t in db.tracks() if parsed.matches(t)]
    if as_json:
        _echo_json([{"path": t.path, "genre": t.genre, "confidence": round(t.confidence, 6), "duration": round(t.duration, 3),
                     "artist": t.artist or None, "title": t.title or None} for t in found])
        return
    for t in found:
        tags = " - ".join(x for x in (t.artist, t.title) if x)
        click.echo(f"{t.genre:<10} {t.confidence:4.0%}  {_minutes(t.duration)}  {t.path}" + (f"  [{tags}]" if tags else ""))
    click.echo(f"{len(found)} track(s)", err=True)


def _minutes(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60:3d}:{s % 60:02d}"


@library.command()
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
def duplicates(db_path: Path | None, as_json: bool) -> None:
    """Files with identical content (same hash of their bytes), from the index; nothing is deleted.

    Only exact copies are found: the same song encoded twice differs in its bytes
    (`library similar` finds those by sound).
    """
    with _open_db(db_path, must_exist=True) as db:
        groups = db.duplicates()
    if as_json:
        _echo_json([{"hash": g[0].hash, "size": g[0].size, "paths": [t.path for t in g]} for g in groups])
        return
    for g in groups:
        click.echo(f"{len(g)} copies of {g[0].size / 1e6:.1f} MB ({g[0].genre}; hash {g[0].hash[:12]}):")
        for t in g:
            click.echo(f"  {t.path}")
    spare = sum((len(g) - 1) * g[0].size for g in groups)
    click.echo(f"{len(groups)} group(s) of identical files; {spare / 1e6:.1f} MB in extra copies" if groups else "no identical files")


@library.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.argument("genre", required=False)
@_db_option
@model_options
@click.option("--remove", is_flag=True, help="Forget the label of PATH.")
@click.option("--list", "list_", is_flag=True, help="List every label.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print the labels as JSON.")
def label(path: Path | None, genre: str | None, db_path: Path | None, model_path: Path | None, device: str,
          remove: bool, list_: bool, as_json: bool) -> None:
    """Say which genre the file at PATH really is (for `genre-trainer finetune --library`).

    GENRE must be one of the model's genres (--model; default: the bundled one).
    `label --list` shows every label, `label PATH --remove` forgets one.
    """
    from ..library.labels import label_track, remove_label, user_labels

    shapes = {"list": not (path or genre or remove), "remove": bool(path) and not genre, "set": bool(path and genre)}
    if not shapes["list" if list_ else "remove" if remove else "set"]:
        raise click.UsageError("use `label PATH GENRE`, `label PATH --remove` or `label --list`")
    with _open_db(db_path) as db:
        if list_:
            _echo_labels(user_labels(db), as_json)
        elif remove:
            if not remove_label(db, path):
                raise click.ClickException(f"{path}: has no label")
            click.echo(f"label of {path} removed")
        else:
            try:
                stored = label_track(db, path, genre, load_engine(model_path, device).labels)
            except LibraryError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"{stored.path}: {stored.genre}")


def _echo_labels(rows: list[Any], as_json: bool) -> None:
    if as_json:
        _echo_json([r.to_dict() for r in rows])
        return
    if not rows:
        click.echo("no labels recorded")
    for r in rows:
        click.echo(f"{r.genre:<10} {r.path}")
