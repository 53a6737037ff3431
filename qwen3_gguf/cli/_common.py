"""What every `qwen3-gguf` command shares: the error handling of the group, the options that mean
the same everywhere (-m, --device, --threads), and the helpers that print results."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path

import click

from ..errors import UserError
from ..limits import MAX_INPUT_TOKENS

DEVICES = ("auto", "cpu", "gpu")


class AppState:
    """What the group's own options decide for every command (ctx.obj)."""

    verbose = False


class AppGroup(click.Group):
    """Turns a UserError into one line on stderr and exit code 2 (a traceback with --verbose)."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """`embed --files ARGS` is an alias of `embed-files ARGS`."""
        if args and args[0] == "embed":
            end = args.index("--") if "--" in args else len(args)
            options, rest = args[1:end], args[end:]
            if "--files" in options:
                args = ["embed-files", *(a for a in options if a != "--files"), *rest]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)  # every truncation is told
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except UserError as exc:
                if ctx.obj is not None and ctx.obj.verbose:
                    raise
                click.echo(f"Error: {exc}", err=True)
                ctx.exit(2)
            except KeyboardInterrupt:
                click.echo("Interrupted; nothing partial was left behind.", err=True)
                ctx.exit(130)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


# --- shared options ------------------------------------------------------------------------------

def model_option(*, kind: str = "Embedding", default: str | None = None, required: bool = False, help: str = ""):
    """-m/--model: a GGUF file, hf://OWNER/REPO/FILE.gguf or a catalog name; a name nobody published
    is built here, before the command runs (see qwen3_gguf.builds)."""
    text = help or (f"{kind} GGUF file, hf://OWNER/REPO/FILE.gguf or catalog name MODEL[:TYPE[+RECIPE]] "
                    "(see qwen3-gguf models).")

    def build_on_demand(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            from ..builds import build_if_needed

            build_if_needed(value, kind.lower(), say=lambda line: click.echo(line, err=True))
        return value

    return click.option("-m", "--model", default=default, required=required, show_default=default is not None,
                        help=text, callback=build_on_demand)


device_option = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                             help="Where llama.cpp runs: auto offloads every layer when the build has a GPU.")
threads_option = click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
max_tokens_option = click.option("--max-tokens", type=click.IntRange(min=1), default=MAX_INPUT_TOKENS,
                                 show_default=True, help="Longer inputs are truncated (keeping the EOS).")


def embedding_options(command):
    """How texts are embedded: as queries (--query, --instruction) and at which Matryoshka --dim."""
    for option in reversed([
        click.option("--query", "as_query", is_flag=True,
                     help="Embed as search queries (with the default retrieval instruction)."),
        click.option("--instruction", help="Embed as queries with this task description."),
        click.option("--dim", type=int, help="Keep the first DIM Matryoshka dimensions (renormalized)."),
    ]):
        command = option(command)
    return command


def runtime_options(command):
    """--device and --threads, in that order."""
    return device_option(threads_option(command))


# --- output helpers ------------------------------------------------------------------------------

def stdin_lines() -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("no input: pass texts as arguments or pipe them on stdin, one per line")
    lines = [line.rstrip("\r\n") for line in sys.stdin]
    lines = [line for line in lines if line]
    if not lines:
        raise UserError("stdin held no text (empty lines are skipped)")
    return lines


def one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


@contextlib.contextmanager
def token_progress(desc: str = "embedding"):
    """A tokens/s bar on stderr (on a terminal); call the function it gives after each batch."""
    from ..progress import progress_bar

    with progress_bar(total=None, enabled=True, unit="tok", desc=desc) as bar:
        shown = 0

        def show(counts) -> None:
            nonlocal shown
            if bar is not None:
                bar.update(counts.tokens - shown)
                bar.set_postfix(files=counts.files, chunks=counts.chunks, refresh=False)
            shown = counts.tokens

        yield show


def rate(counts, started: float) -> str:
    seconds = time.perf_counter() - started
    return f"{seconds:.1f} s, {counts.tokens / max(seconds, 1e-9):.0f} tokens/s"


def prepared_search(model: Path, output: Path, work_dir: Path | None, no_imatrix: bool, imatrix_file: Path | None,
                    budget_minutes: float | None, threads: int | None):
    """What every search starts from, after refusing what cannot be searched or written: its work folder,
    the progress printer and the settings."""
    from ..atomic import ensure_writable
    from ..gguf_file import read_model_file
    from ..quantization import SearchSettings, read_imatrix

    read_model_file(model)
    ensure_writable(output)
    settings = SearchSettings(imatrix=read_imatrix(imatrix_file) if imatrix_file is not None else None,
                              collect_imatrix=not no_imatrix, budget_minutes=budget_minutes, threads=threads)
    return work_dir or output.parent / ".qwen3-gguf-search", lambda line: click.echo(line, err=True), settings
