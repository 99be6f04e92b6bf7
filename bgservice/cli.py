"""The project's command line: `bgremove` (or `python -m bgservice`).

    bgremove remove IN... [-o OUT]   cut out files, folders (recursively) or stdin (-)
    bgremove watch IN OUT      cut out each image that appears in a folder, as it appears
    bgremove download [NAME]   fetch a model's weights from its sources in turn and verify them
    bgremove models            list the models the service knows
    bgremove evaluate DATA     score modes on images with ground truth (CSV + contact sheet)
    bgremove train --images DIR --masks DIR --out FILE   train or fine-tune on image/mask pairs
    bgremove serve             the development server (production: gunicorn -c gunicorn_conf.py)

Defaults come from the same settings as the service (GlobalVariables: U2NET_MODEL,
U2NET_MODELS_DIR, ...), so `bgremove download` fetches exactly what the service will look for.
Exit codes: 0 done, 1 the operation (or, for remove, some file) failed, 2 bad usage or settings.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from u2net.atomic import atomic_write
from u2net.registry import MODELS, ModelLoadError, Source, UnknownModel, get_spec, source_kind
from u2net.weights import default_weights_path, download

from GlobalVariables import Settings, SettingsError, configure_logging, model_entry

from .composites import ORIGINAL_BACKGROUNDS
from .errors import ServiceError
from .fields import BG_IMAGE_HELP, MODEL, OPTIONS

log = logging.getLogger("u2net_service.cli")


def _cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    spec = get_spec(args.name or settings.model)
    dest = default_weights_path(args.models_dir or settings.models_dir, spec)
    if dest.exists() and not args.force:
        print(f"{dest} already exists (use --force to download it again)")
        return 0
    sources = tuple(Source(url, "the --url given", kind=source_kind(url)) for url in args.url or ())
    got = download(spec, dest, sources=sources or None,
                   sha256=args.sha256 or settings.weights_sha256, progress=not args.quiet)
    print(f"saved {dest} (sha256 {got.sha256})")
    print(f"  from {got.source.host}: {got.source.url}")
    if got.source.kind == "onnx":
        print(f"  an ONNX export (sha256 {got.fetched_sha256}), imported and proved against "
              "ONNX Runtime")
    return 0


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """One line per model: the default marked *, architecture, input size, download size, licence,
    whether its weights are where the service looks (and where), and what it is for."""
    rows = []
    for spec in MODELS.values():
        path = default_weights_path(settings.models_dir, spec)
        rows.append(("*" if spec.name == settings.model else " ", spec.name, spec.architecture,
                     f"{spec.input_size}px", f"{spec.size_mb:.1f} MB", spec.licence,
                     f"downloaded: {path}" if path.is_file() else "not downloaded"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row, spec in zip(rows, MODELS.values(), strict=True):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  "
              + row[-1])
        print(f"    {spec.description}")
    if settings.weights:
        print(f"U2NET_WEIGHTS={settings.weights} is used for {settings.model} instead")
    return 0


def _cmd_import_onnx(args: argparse.Namespace, settings: Settings) -> int:
    from u2net.onnx_import import import_to_file

    spec = get_spec(args.model)
    if not args.file.is_file():
        print(f"error: {args.file} is not a file", file=sys.stderr)
        return 2
    tensors = import_to_file(args.file, spec, args.output)
    print(f"wrote {args.output} ({spec.architecture}, {tensors} tensors; proved against ONNX "
          "Runtime)")
    return 0


def _load_service(settings: Settings, model: str | None = None, weights: Path | None = None,
                  images: int = 0):
    """The service for a command: the settings, with --model / --weights on top; `images` is
    how many it will process (service.SHORT_JOB_IMAGES)."""
    from .service import assemble_job

    changes = {k: v for k, v in (("model", model), ("weights", weights)) if v}
    return assemble_job(settings, images, **changes)


def _background_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ORIGINAL_BACKGROUNDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ORIGINAL_BACKGROUNDS)}")
    return names


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from .evaluate import ModeSpec, WorstEdges, evaluate, summarise, write_outputs

    try:
        modes = [ModeSpec.parse(m) for m in (args.mode or ["soft", "refine", "threshold:200"])]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    composites = (args.composites if args.composites is not None
                  else (args.data / "alphas").is_dir())
    # Several models in one run: --model NAME or --model NAME=WEIGHTS, repeatable.
    models = [model_entry(m, "--model") for m in (args.model or [settings.model])]
    rows, sheet, worst = [], [], WorstEdges()
    for name, weights in models:
        service = _load_service(settings, name, weights or args.weights)
        runtime = service.runtime
        label = (f"{name}:{weights.stem}/" if weights else f"{name}/") if len(models) > 1 else ""
        these, _, these_sheet = evaluate(args.data, modes, runtime.mask_for, label=label,
                                         refine=service.remover.refine,
                                         composites=composites, limit=args.limit, worst=worst,
                                         backgrounds=args.backgrounds)
        rows += these
        sheet += these_sheet
        service.close()
    summary = summarise(rows)
    if args.out:
        write_outputs(args.out, rows, summary, sheet, worst)
    keys = [k for k in ("iou", "boundary_f", "sad", "grad", "sad_unknown", "grad_unknown",
                        "composite_edge", "composite_whole", "post_ms") if k in summary[0]]
    print(f"\n{'mode':24s} {'stat':6s} " + " ".join(f"{k:>12s}" for k in keys))
    for entry in summary:
        print(f"{entry['mode']:24s} {entry['stat']:6s} "
              + " ".join(f"{entry[k]:12.4f}" if k in entry else f"{'-':>12s}" for k in keys))
    if args.out:
        print(f"\nwritten {args.out}/results.csv, summary.csv, contact_sheet.png"
              + (", worst_edges.png" if composites else ""))
    return 0


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


Plan = list[tuple[Path | str, Path | str]]  # (source, destination); "-" is stdin / stdout


def _plan(inputs: list[str], output: Path | None, fmt: str) -> Plan:
    """(source, destination) pairs; '-' stands for stdin / stdout. Folders are walked
    recursively and their tree is kept under the output folder."""
    def named(path: Path) -> str:
        return f"{path.stem}-nobg.{fmt}"

    as_folder = output is not None and (len(inputs) > 1 or output.is_dir()
                                        or any(Path(i).is_dir() for i in inputs if i != "-"))
    plan: Plan = []
    for item in inputs:
        if item == "-":
            plan.append(("-", output if output and not as_folder else "-"))
            continue
        src = Path(item)
        if src.is_dir():
            base = output if output else src.with_name(f"{src.name}-nobg")
            for f in sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                plan.append((f, base / f.relative_to(src).with_suffix(f".{fmt}")))
        elif output is None:
            plan.append((src, src.with_name(named(src))))
        else:
            plan.append((src, output / named(src) if as_folder else output))
    return plan


def _remove_all(todo: Plan, remover, options, quiet: bool, jobs: int = 1) -> int:
    """Cut out every (source, destination) pair, `jobs` at a time; returns how many failed (each
    says why, in the plan's order). Several at a time, one image decodes, is post-processed and
    encoded while another is in the network (on a GPU they also share its batches); each holds
    its image only while it is in hand, so memory grows with `jobs`, not with the plan."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    failed = 0
    pool = ThreadPoolExecutor(max(1, jobs))
    try:
        with tqdm(total=len(todo), unit="image", file=sys.stderr,
                  disable=quiet or len(todo) < 2) as bar:
            # map() hands the pairs to `jobs` threads and yields in order: the progress bar and
            # the error lines come from this thread only.
            problems = pool.map(lambda pair: _remove_one(pair[0], pair[1], remover, options), todo)
            for (src, _), problem in zip(todo, problems, strict=True):
                bar.update()
                if problem is not None:
                    failed += 1
                    bar.write(f"error: {src}: {problem}", file=sys.stderr)
    finally:
        # On Ctrl-C the images not yet started are dropped, those in hand finish (their writes
        # are atomic). map() drops them itself when the interrupt comes while it waits; one that
        # comes in the loop's body would otherwise leave a plain `with` finishing them all.
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


def _remove_one(src: Path | str, dst: Path | str, remover, options) -> str | None:
    """Cut out one file (or stdin) into `dst` (or stdout); what went wrong, or None."""
    try:
        data = sys.stdin.buffer.read() if src == "-" else Path(src).read_bytes()
        rendered = remover.process(data, options)
        if dst == "-":
            sys.stdout.buffer.write(rendered.data)
            sys.stdout.buffer.flush()
        else:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(Path(dst), rendered.data)
        return None
    except (ServiceError, OSError) as exc:
        return exc.message if isinstance(exc, ServiceError) else exc.strerror or str(exc)


def _output_problem(inputs: list[str], output: Path | None) -> str | None:
    """Why -o cannot take these inputs: several inputs need a folder, and a name like
    `single.png` that is not one would silently become one."""
    if output is not None and len(inputs) > 1 and not output.is_dir() \
            and output.suffix.lower() in IMAGE_SUFFIXES:
        return (f"{len(inputs)} inputs need an output folder, but -o {output} names a file; "
                "give a folder (it is created) or a single input")
    return None


def _jobs(text: str) -> int:
    """--jobs: 1 to MAX_JOB_IMAGES (a job's queue admits that many)."""
    from .limits import MAX_JOB_IMAGES

    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= MAX_JOB_IMAGES:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_JOB_IMAGES}, "
                                         f"got {text!r}")
    return jobs


class UsageError(Exception):
    """Bad command-line input: printed as `error: <message>`, exit code 2."""


def _remove_options(args: argparse.Namespace, settings: Settings):
    """The cut-out options of `remove` and `watch`, checked with the service's messages (the
    same strings the upload endpoint takes); --bg-image decoded once for every input."""
    from dataclasses import replace

    from .imageio import decode_image
    from .options import parse_options

    given = {f.name: getattr(args, f.name) for f in OPTIONS if f is not MODEL}
    try:
        options = parse_options({k: str(int(v) if isinstance(v, bool) else v)
                                 for k, v in given.items() if v not in (None, False)},
                                settings.default_mode)
        if args.bg_image is not None:
            picture = decode_image(args.bg_image.read_bytes(), settings.max_image_pixels,
                                   "--bg-image")
            options = replace(options, bg_image=picture)
    except ServiceError as exc:  # BadRequest; NotAnImage, TooLarge for the picture
        raise UsageError(exc.message) from None
    except OSError as exc:
        raise UsageError(f"--bg-image {args.bg_image}: {exc.strerror or exc}") from None
    return options


def _cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    options = _remove_options(args, settings)
    problem = _output_problem(args.inputs, args.output)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    plan = _plan(args.inputs, args.output, options.output_format)
    if not plan:
        print("error: no images found in the given inputs", file=sys.stderr)
        return 2
    todo = [(s, d) for s, d in plan if d == "-" or args.overwrite or not Path(d).exists()]
    skipped = len(plan) - len(todo)
    if not todo:  # nothing to do: no model to load (that takes seconds)
        if not args.quiet:
            print(f"0 done, 0 failed, {skipped} skipped (already there; --overwrite redoes them)",
                  file=sys.stderr)
        return 0
    service = _load_service(settings, args.model, args.weights, images=len(todo))
    try:
        failed = _remove_all(todo, service.remover, options, args.quiet, args.jobs)
    finally:
        service.close()
    if not args.quiet and len(plan) == 1 and not failed and plan[0][1] != "-":
        print(f"wrote {plan[0][1]}", file=sys.stderr)
    if not args.quiet and len(plan) > 1:
        print(f"{len(todo) - failed} done, {failed} failed, {skipped} skipped (already there)",
              file=sys.stderr)
    return 1 if failed else 0


def _cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from .watch import Watcher, watch_problem

    options = _remove_options(args, settings)
    problem = watch_problem(args.folder, args.output)
    if problem:
        raise UsageError(problem)

    def cut_out(pairs: Plan, service) -> int:
        return _remove_all(pairs, service.remover, options, quiet=True)

    watcher = Watcher(args.folder, args.output, options.output_format, plan=_plan,
                      load=lambda: _load_service(settings, args.model, args.weights, images=1000),
                      cut_out=cut_out, quiet=args.quiet)
    return watcher.run(args.interval, args.max_files, args.idle_exit)


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from u2net.train import DataError, TrainConfig, train
    from u2net.train import best_path as best_weights

    args.model = args.model or settings.model
    config = TrainConfig(**{k: v for k, v in vars(args).items()
                            if k not in ("command", "run") and v is not None})
    try:
        summary = train(config)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best, start, last = (summary["best_validation_mae"], summary["start_validation_mae"],
                         summary["validation_mae"])
    print(f"trained {summary['steps']} steps; weights in {summary['weights']}"
          + (f" (validation MAE {last:.4f}; the starting weights {start:.4f}, best {best:.4f})"
             if best is not None else ""))
    for path in summary["timelapse"]:
        print(f"timelapse: {path}")
    if summary["worse_than_start"]:
        print(f"warning: the trained weights score worse on validation than the starting ones "
              f"({last:.4f} against {start:.4f}); {best_weights(Path(summary['weights']))} holds the "
              "best seen (the starting weights if nothing beat them)", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The development server, API.py, run as its own program: the core (this package) never
    imports the HTTP layer."""
    os.execv(sys.executable, [sys.executable, "-m", "API"])
    return 0  # not reached


def _cut_out_options(parser: argparse.ArgumentParser) -> None:
    """remove's and watch's options: the service's (described once, bgservice/fields.py), the
    background picture, and the model this run loads."""
    for field in OPTIONS:
        if field is not MODEL:  # --model below: the CLI loads the one model it runs
            field.add_option(parser)
    parser.add_argument("--bg-image", type=Path, help=BG_IMAGE_HELP)
    parser.add_argument("--model", help="model name for this run (default: $U2NET_MODEL)")
    parser.add_argument("--weights", type=Path, help="weights file (default: $U2NET_WEIGHTS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgremove", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    get = sub.add_parser("download", help="download a model's weights and verify them")
    get.add_argument("name", nargs="?", help="model name (default: $U2NET_MODEL or u2net_human_seg)")
    get.add_argument("--models-dir", type=Path,
                     help="where weights live (default: $U2NET_MODELS_DIR or saved_models/)")
    get.add_argument("--url", action="append",
                     help="fetch from this URL instead of the model's sources (repeatable; "
                          "file:///path works for a copy you already have; a name ending in "
                          ".onnx is imported as an ONNX export)")
    get.add_argument("--sha256",
                     help="the SHA-256 the fetched file must have (default: "
                          "$U2NET_WEIGHTS_SHA256, else each source's own checksum)")
    get.add_argument("--force", action="store_true", help="download even if the file exists")
    get.add_argument("--quiet", action="store_true", help="no progress bar; warnings and errors only")
    get.set_defaults(run=_cmd_download)

    sub.add_parser("models", help="list the known models").set_defaults(run=_cmd_models)

    imp = sub.add_parser("import-onnx", help="turn an ONNX export of a model into its .pth weights",
                         description="Maps the graph's convolutions (and batch norms, where kept) "
                                     "onto the model's architecture, checking every shape, then "
                                     "proves the result against ONNX Runtime on a probe image. "
                                     "Exit codes: 0 written, 1 refused, 2 bad usage.")
    imp.add_argument("file", type=Path, help="the .onnx file")
    imp.add_argument("--model", required=True, help="registry name whose architecture it is")
    imp.add_argument("-o", "--output", type=Path, required=True, help="weights file to write (.pth)")
    imp.set_defaults(run=_cmd_import_onnx)

    rm = sub.add_parser("remove", help="remove the background from files, folders or stdin",
                        description="Exit codes: 0 all done, 1 some file failed (one line each "
                                    "on stderr), 2 bad usage.")
    rm.add_argument("inputs", nargs="+", help="image files, folders (recursive), or - for stdin")
    rm.add_argument("-o", "--output", type=Path,
                    help="output file (one input) or folder (several inputs or a folder); "
                         "default: <name>-nobg.<format> beside each input, <folder>-nobg/ for "
                         "a folder, stdout for stdin")
    _cut_out_options(rm)
    rm.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    rm.add_argument("--jobs", type=_jobs, default=min(4, os.cpu_count() or 1), metavar="N",
                    help="images in hand at once, 1-32 (default: the CPU count, at most 4): one "
                         "decodes and encodes while another is in the network")
    rm.add_argument("--quiet", action="store_true",
                    help="no progress bar or summary; warnings and errors only")
    rm.set_defaults(run=_cmd_remove)

    wa = sub.add_parser("watch", help="cut out each image that appears in a folder",
                        description="Polls IN and writes each new image's cut-out into OUT "
                                    "(the tree kept; images with an output already are left "
                                    "alone), one at a time. Exit codes: 0 stopped, 1 some file "
                                    "failed, 2 bad usage.")
    wa.add_argument("folder", type=Path, help="the folder to watch (recursively)")
    wa.add_argument("output", type=Path, help="where the cut-outs go (outside the watched folder)")
    _cut_out_options(wa)
    wa.add_argument("--interval", type=float, default=1.0,
                    help="seconds between scans (default 1); a file is taken once it is the same "
                         "at two scans")
    wa.add_argument("--max-files", type=int, help="stop after this many images")
    wa.add_argument("--idle-exit", type=float,
                    help="stop after this many seconds with nothing new (default: never)")
    wa.add_argument("--quiet", action="store_true",
                    help="no line per image; warnings and errors only")
    wa.set_defaults(run=_cmd_watch)

    ev = sub.add_parser("evaluate", help="score the pipeline on images with ground-truth mattes")
    ev.add_argument("data", type=Path,
                    help="folder with images/, masks/ or alphas/, and optional trimaps/")
    ev.add_argument("--mode", action="append",
                    help="soft, refine or threshold:N, each optionally +filter for the subject "
                         "filter (repeatable; default: all three)")
    ev.add_argument("--model", action="append",
                    help="NAME or NAME=WEIGHTS; repeat to compare models (default: $U2NET_MODEL)")
    ev.add_argument("--weights", type=Path, help="weights file (default: $U2NET_WEIGHTS)")
    ev.add_argument("--out", type=Path, help="write results.csv, summary.csv, contact_sheet.png "
                                             "(and worst_edges.png with composites)")
    ev.add_argument("--composites", action=argparse.BooleanOptionalAction,
                    help="put each subject on plain and generated backgrounds first, and score "
                         "the cut-outs on new ones too (default: on for an alphas/ folder)")
    ev.add_argument("--backgrounds", type=_background_names,
                    help="with composites, only these original backgrounds, comma-separated "
                         f"(of {', '.join(ORIGINAL_BACKGROUNDS)}; default: all)")
    ev.add_argument("--limit", type=int, help="only the first N images")
    ev.set_defaults(run=_cmd_evaluate)

    tr = sub.add_parser("train", help="train or fine-tune a model on image/mask pairs",
                        description="Trains as the authors did (resize to 320, random 288 crop, "
                                    "BCE on all seven outputs, Adam 1e-3), plus a horizontal flip. "
                                    "Fine-tuning (--init) keeps the batch norms' statistics and "
                                    "uses 1e-5. The validation set is scored before the first "
                                    "step and at every save, with a warning when the model gets "
                                    "worse than it started. Writes the weights in the official "
                                    "format at every save; --resume continues from the training "
                                    "state beside them.")
    tr.add_argument("--images", type=Path, required=True, help="folder of training images")
    tr.add_argument("--masks", type=Path, required=True,
                    help="folder of masks with the images' file names (any image extension)")
    tr.add_argument("--out", type=Path, required=True, help="weights file to write (.pth)")
    tr.add_argument("--model", help="architecture and preprocessing by model name "
                                           "(default: $U2NET_MODEL or u2net_human_seg)")
    tr.add_argument("--init", type=Path, help="start from these weights (fine-tune)")
    tr.add_argument("--steps", type=int, help="optimiser steps (default 10000)")
    tr.add_argument("--batch-size", type=int, help="default 12, as the authors")
    tr.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3 from scratch, "
                                             "1e-5 when fine-tuning with --init)")
    tr.add_argument("--size", type=int, help="resize side (default: the model's input, 320)")
    tr.add_argument("--crop", type=int, help="random crop side (default 90%% of --size)")
    tr.add_argument("--val-images", type=Path, help="validation images (scored at each save)")
    tr.add_argument("--val-masks", type=Path, help="validation masks")
    tr.add_argument("--save-every", type=int, help="steps between saves (default 1000)")
    tr.add_argument("--log-every", type=int, help="steps between log lines (default 50)")
    tr.add_argument("--workers", type=int, help="data loading processes (default 2)")
    tr.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    tr.add_argument("--amp", action="store_true", default=None, help="bf16 autocast")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--resume", action="store_true", default=None,
                    help="continue from <out>.train.pt")
    tr.add_argument("--freeze-batchnorm", action=argparse.BooleanOptionalAction,
                    help="keep the batch norms' statistics (default: on with --init; a small "
                         "batch's statistics wreck pretrained weights)")
    tr.add_argument("--freeze-encoder", action="store_true", default=None,
                    help="train the decoder only (small sets)")
    tr.add_argument("--timelapse", action="store_true", default=None,
                    help="at every save a strip of image | ground truth | prediction for a few "
                         "validation pictures (<out>.timelapse/), then an animated GIF (and MP4)")
    tr.set_defaults(run=_cmd_train)

    sub.add_parser("serve", help="run the development server on $PORT (5002)").set_defaults(
        run=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        level = settings.log_level
        if getattr(args, "quiet", False) and level in ("DEBUG", "INFO"):
            level = "WARNING"  # --quiet: nothing on stderr but problems (no "model loaded" lines)
        configure_logging(level, settings.log_format)
        return args.run(args, settings)
    except (SettingsError, UnknownModel, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:  # weights missing or bad, an ONNX import refused
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
