"""``biocnn simulate``: labelled cryo-EM particle images from atomic models and maps.

Examples
--------
    biocnn simulate --demo maps/        # 4 shipped proteins; then `biocnn train maps/`
    biocnn simulate out/ --structures a.pdb b.cif.gz map.mrc --n-per-class 2000 \\
        --box 128 --apix 2 --snr 0.1 --junk --preview out.png
    biocnn simulate out/ a.pdb b.pdb c.pdb --names good,good,other   # a + b merged in "good"
    biocnn simulate out/ --kind class-averages --n-per-class 5000 --box 128 --preview ca.png
    biocnn simulate out/ --kind class-averages map.mrc --map-apix 1.06 --procedural-share 0.5

Writes ``out/<class>/<class>.mrcs`` stacks, ``out/particles.star`` (RELION 3.1, every
generated parameter) and ``out/run.json``. ``--kind class-averages`` writes ``good/`` and
``junk/`` 2D class averages (procedural models plus the given or shipped structures; see
``biocnn.sim.average_dataset``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from biocnn.sim.config import DEMO_SETTINGS, KINDS, AverageSettings, SimConfig

__all__ = ["simulate", "register"]

_D = SimConfig()
_A = AverageSettings()


def _demo(name: str) -> str:
    return f" (demo: {DEMO_SETTINGS[name]:g})" if name in DEMO_SETTINGS else ""


def _is_default(ctx: typer.Context, name: str) -> bool:
    """True when option ``name`` was not given on the command line (nor via the environment)."""
    source = ctx.get_parameter_source(name)
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def simulate(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="Output directory (created; must be empty)."),
    more: list[Path] = typer.Argument(
        None, show_default=False, help="More structure files (same as --structures)."
    ),
    structures: list[Path] = typer.Option(
        None, "--structures", "-s", show_default=False,
        help="PDB/mmCIF (.gz ok) or MRC map; one class each; class name = file stem.",
    ),
    demo: bool = typer.Option(False, "--demo", help="Use the 4 shipped structures, demo settings."),
    config: Path = typer.Option(None, "--config", show_default=False,
                                help="TOML file of settings (an averages table for class-average "
                                     "ranges); options given on the command line override it."),
    kind: str = typer.Option(_D.kind, "--kind",
                             help=f"What to simulate: {' or '.join(KINDS)} (good/junk 2D classes)."),
    procedural_share: float = typer.Option(
        _A.procedural_share, help="class-averages: share of good classes from procedural models."),
    map_apix: str = typer.Option(None, show_default=False,
                                 help="Pixel size in Å of maps whose header has none: one value, "
                                      "or one per structure (0 = header)."),
    names: str = typer.Option(None, show_default=False,
                              help="Comma-separated class names, one per structure; repeated "
                                   "names merge structures into one class."),
    n_per_class: int = typer.Option(_D.n_per_class,
                                    help="Images per class." + _demo("n_per_class")),
    box: int = typer.Option(_D.box, help="Image box in pixels." + _demo("box")),
    apix: float = typer.Option(_D.apix, help="Pixel size in Å." + _demo("apix")),
    max_shift: float = typer.Option(_D.max_shift,
                                    help="Max in-plane shift in px." + _demo("max_shift")),
    snr: float = typer.Option(_D.snr, help="var(signal)/var(noise) per image." + _demo("snr")),
    defocus_min: float = typer.Option(_D.defocus_min, help="Min defocus in µm."),
    defocus_max: float = typer.Option(_D.defocus_max, help="Max defocus in µm."),
    astigmatism: float = typer.Option(_D.astigmatism, help="Max DefocusU - DefocusV in µm."),
    voltage: float = typer.Option(_D.voltage, help="Acceleration voltage in kV."),
    cs: float = typer.Option(_D.cs, help="Spherical aberration in mm."),
    amplitude_contrast: float = typer.Option(_D.amplitude_contrast, help="Amplitude contrast."),
    bfactor: float = typer.Option(_D.bfactor, help="CTF envelope B-factor in Å^2."),
    invert: bool = typer.Option(_D.invert, "--invert/--no-invert",
                                help="Dark protein, as in raw micrographs."),
    phase_flip: bool = typer.Option(_D.phase_flip, "--phase-flip/--no-phase-flip",
                                    help="Phase-flip the images."),
    junk: bool = typer.Option(_D.junk, "--junk/--no-junk",
                              help="Add a 'junk' class: noise, ice, carbon edges, overlaps."),
    tilt_max: float = typer.Option(_D.tilt_max, help="Max tilt in degrees (preferred views)."),
    keep_waters: bool = typer.Option(_D.keep_waters, "--keep-waters/--no-waters",
                                     help="Keep the waters of atomic models."),
    seed: int = typer.Option(_D.seed, help="Random seed."),
    workers: int = typer.Option(_D.workers, help="class-averages: worker processes (same images "
                                                  "whatever the number)."),
    device: str = typer.Option(_D.device, help="auto, cpu or cuda."),
    preview: Path = typer.Option(None, show_default=False,
                                 help="Save a gallery of examples per class (e.g. out.png)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Simulate labelled particle images (folder per class + RELION STAR) for `biocnn train`."""
    from biocnn.cli.common import cli_errors, console, err_console

    def show_warning(message: Warning | str, *_: object, **__: object) -> None:
        err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    settings = {
        "n_per_class": n_per_class, "box": box, "apix": apix, "max_shift": max_shift,
        "snr": snr, "defocus_min": defocus_min, "defocus_max": defocus_max,
        "astigmatism": astigmatism, "voltage": voltage, "cs": cs,
        "amplitude_contrast": amplitude_contrast, "bfactor": bfactor, "invert": invert,
        "phase_flip": phase_flip, "junk": junk, "tilt_max": tilt_max,
        "keep_waters": keep_waters, "seed": seed, "device": device, "workers": workers,
    }
    with cli_errors(flags={"out": "OUT"}), warnings.catch_warnings():
        warnings.showwarning = show_warning
        from biocnn.errors import BiocnnError
        from biocnn.sim.simulate import demo_structures, simulate_dataset
        from biocnn.sim.structure import ATOMIC_SUFFIXES, MAP_SUFFIXES

        if any(s.lower() in ATOMIC_SUFFIXES + MAP_SUFFIXES for s in out.suffixes):
            raise BiocnnError(f"OUT {out} looks like a structure file; give the output folder "
                              "first: biocnn simulate OUT --structures FILE...")
        from biocnn.sim.config import apply_sim_values, load_sim_toml

        file_values = load_sim_toml(config) if config else {}
        given = {k: v for k, v in settings.items() if not _is_default(ctx, k)}
        kind = kind if not _is_default(ctx, "kind") else file_values.get("kind", kind)
        paths = [*(structures or []), *(more or [])]
        averages = kind == "class-averages"
        if demo and (paths or file_values.get("structures")):
            raise BiocnnError("--demo uses the shipped structures; do not also give --structures")
        if not demo and not paths and not file_values.get("structures") and not averages:
            raise BiocnnError("no structures: give --structures FILE... or --demo")
        if averages and (names or file_values.get("names")):
            raise BiocnnError("--names: class averages are always 'good' and 'junk'")
        cfg = apply_sim_values(SimConfig(), file_values)
        if demo:  # demo defaults, unless given in the file or on the command line
            cfg = apply_sim_values(cfg, {k: v for k, v in DEMO_SETTINGS.items()
                                         if k not in file_values})
        cli: dict[str, object] = {**given, "kind": kind}
        if demo:
            cli["structures"] = [str(p) for p in demo_structures()]
        elif paths:
            cli["structures"] = [str(p) for p in paths]
        if names:
            cli["names"] = [s.strip() for s in names.split(",")]
        if map_apix:
            cli["map_apix"] = _floats(map_apix, "--map-apix")
        if not _is_default(ctx, "procedural_share"):
            cli["averages"] = {"procedural_share": procedural_share}
        cfg = apply_sim_values(cfg, cli)
        summary = simulate_dataset(cfg, out, overwrite=overwrite, progress=progress,
                                   preview=preview)
        console.print(
            f"wrote {sum(summary.counts.values())} images of {len(summary.class_names)} classes "
            f"({', '.join(summary.class_names)}) to {summary.out} in {summary.seconds:.1f} s; "
            f"STAR: {summary.star}" + (f"; preview: {preview}" if preview else ""),
            highlight=False, soft_wrap=True,
        )


def _floats(text: str | None, option: str) -> list[float] | None:
    """Comma-separated numbers (an empty item is 0); a one-line error names the option."""
    from biocnn.errors import BiocnnError

    if not text:
        return None
    try:
        return [float(t) if t.strip() else 0.0 for t in text.split(",")]
    except ValueError:
        raise BiocnnError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the ``biocnn`` app."""
    app.command("simulate")(simulate)
