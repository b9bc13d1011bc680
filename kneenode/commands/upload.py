"""``kneenode upload``: a series from files becomes a job, as the web console's upload does."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kneenode.cli_app import app, fail, settings_for
from kneenode.errors import NodeError
from workers.broker import resolve_redis_url
from workers.upload import UploadFile, import_upload, upload_hand_off

console = Console()


def upload_files(paths: list[Path]) -> list[UploadFile]:
    """The files to upload: each file given, and every file under each folder given (names
    relative to that folder; hidden files are left to the upload's own rules)."""
    out = []
    for path in paths:
        if path.is_dir():
            out += [UploadFile(str(p.relative_to(path)), path=p)
                    for p in sorted(path.rglob("*")) if p.is_file()]
        elif path.is_file():
            out.append(UploadFile(path.name, path=path))
        else:
            raise fail(f"no such file or folder: {path}")
    return out


@app.command("upload")
def upload_cmd(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="A zip of one DICOM series, a series' "
                                                "files or folder, or one NIfTI / NRRD volume.")],
    profile: Annotated[str, typer.Option(help="Processing profile of the job (default: the "
                                         "route's).")] = "",
    user: Annotated[str, typer.Option(help="Who uploads (recorded in the job; default: the "
                                      "login name).")] = "",
    patient_name: Annotated[str, typer.Option(help="Patient Name of a converted volume.")] = "",
    patient_id: Annotated[str, typer.Option(help="Patient ID of a converted volume.")] = "",
    description: Annotated[str, typer.Option(help="Series Description of a converted "
                                             "volume.")] = "",
) -> None:
    """Store a series in the spool and make it a job, through the edge's own chain.

    The same checks as the web console's upload (docs/upload.md): one line naming the refusal's
    code and reason, exit status 1, and nothing kept.
    """
    settings = settings_for(ctx)
    files = upload_files(paths)
    fields = {"PatientName": patient_name, "PatientID": patient_id,
              "SeriesDescription": description}
    try:
        hand_off = upload_hand_off(settings, resolve_redis_url(settings))
        outcome = import_upload(files, settings=settings, hand_off=hand_off, profile=profile,
                                user=user or getpass.getuser(), fields=fields)
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}. {exc.hint}") from None
    if not outcome.job_id:
        raise fail(f"series {outcome.series_uid} stored ({outcome.instances} instances) but not "
                   f"handed to the jobs layer ({outcome.hand_off_error}); a running "
                   "`kneenode serve` announces it")
    console.print(f"job {outcome.job_id} created: series {outcome.series_uid} "
                  f"({outcome.instances} instances, {outcome.kind}) with profile "
                  f"'{outcome.profile}'")
