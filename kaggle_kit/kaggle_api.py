"""The only module that talks to Kaggle: upload a submission, download a competition's files.

It uses the official ``kaggle`` package (an optional extra: ``pip install 'kaggle-kit[upload]'``), imported
only when needed, and turns its failures into one-line :class:`KitError` messages that say what to do:
missing credentials, rules not accepted (HTTP 403), unknown competition (HTTP 404). Kaggle sometimes answers
a misspelt slug with 403 as well, so both messages mention both causes.

Downloads are unpacked into the layout ``kaggle-kit features`` reads (``train/``, ``test/``,
``sample_submission.csv``). Archives come from the network, so extraction is defensive: a member whose path
would land outside the destination refuses the whole archive before anything is written, links are skipped.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from kaggle_kit.artifacts import KitError, check_name

DEFAULT_COMPETITION = "dogs-vs-cats-redux-kernels-edition"

SPLITS = ("train", "test")

_CREDENTIALS_HELP = (
    "create an API token on https://www.kaggle.com/settings (section API) and save it as ~/.kaggle/kaggle.json "
    "(chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY"
)


# ------------------------------------------------------------------------------------------ error mapping
def http_status(exc: BaseException) -> int | None:
    """The HTTP status carried by an exception of any kaggle version, else None.

    Old versions raise ``kaggle.rest.ApiException`` (``.status``); newer ones ``requests.HTTPError``
    (``.response.status_code``); as a last resort a '401/403/404' in the message is taken.
    """
    for candidate in (getattr(exc, "status", None), getattr(exc, "status_code", None),
                      getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(candidate, int):
            return candidate
    match = re.search(r"\b(401|403|404)\b", str(exc))
    return int(match.group(1)) if match else None


def explain_error(exc: BaseException, *, competition: str, action: str) -> KitError:
    """A one-line KitError for a failed Kaggle API call; ``action`` says what was tried ('submitting ...')."""
    status = http_status(exc)
    if status == 401:
        return KitError(f"Kaggle rejected your credentials (HTTP 401) while {action}: {_CREDENTIALS_HELP}")
    if status == 403:
        return KitError(
            f"Kaggle refused access to competition '{competition}' (HTTP 403) while {action}: accept the "
            f"competition rules on https://www.kaggle.com/c/{competition}/rules (while logged in as the owner of "
            "your API token), or check the slug: Kaggle also answers 403 for a misspelt competition"
        )
    if status == 404:
        return KitError(
            f"competition '{competition}' not found (HTTP 404) while {action}: check the slug, the part after /c/ "
            "in the competition's address (e.g. dogs-vs-cats-redux-kernels-edition); Kaggle sometimes answers a "
            "misspelt slug with 403 instead"
        )
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f"HTTP {status}" if status else type(exc).__name__
    return KitError(f"the Kaggle API failed while {action} ({where}): {detail or 'no details'}")


def load_api() -> Any:
    """The official package's authenticated API object.

    subtle: ``import kaggle`` authenticates at import time; without credentials old versions raise OSError
    and newer ones print a message and call ``exit(1)`` (SystemExit), so both are caught around the import.
    """
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            import kaggle
    except ModuleNotFoundError as exc:
        if exc.name not in ("kaggle", None):
            raise KitError(
                f"the kaggle package cannot be imported ({exc}); reinstall it: pip install -U kaggle"
            ) from None
        raise KitError("the Kaggle API package is not installed: pip install kaggle "
                       "(or pip install 'kaggle-kit[upload]')") from None
    except (OSError, SystemExit, ValueError) as exc:
        said = " ".join((quiet.getvalue() or str(exc)).split())
        raise KitError(f"no usable Kaggle credentials ({said or type(exc).__name__}): {_CREDENTIALS_HELP}") from None
    return kaggle.api


# -------------------------------------------------------------------------------------------------- submit
def submit_file(path: Path | str, *, competition: str, message: str) -> None:
    """Upload a submission file to ``competition`` with ``message`` as its description."""
    check_name("competition", competition)
    api = load_api()
    try:
        api.competition_submit(str(path), message, competition)
    except Exception as exc:  # any failure of the client: mapped to one line below
        raise explain_error(exc, competition=competition, action=f"submitting {path}") from None


# ------------------------------------------------------------------------------------------------ download
def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_zip(archive: Path, dest: Path, *, warn: Callable[[str], None] = print) -> list[Path]:
    """Extract ``archive`` into ``dest`` safely; return the paths of the files written.

    Every member's resolved path must stay inside ``dest`` (no absolute paths, no '..', no escape through
    a link already on disk), else the archive is refused before anything is written. Symbolic links in the
    archive are skipped with a warning.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = []
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if PurePosixPath(info.filename).is_absolute() or not target.is_relative_to(root):
                raise KitError(f"{archive} holds {info.filename!r}, which would be written outside {dest}; "
                               "the archive is refused (nothing was extracted from it)")
            members.append((info, target))
        for info, target in members:
            if _is_link(info):
                warn(f"warning: {archive} member {info.filename!r} is a symbolic link; skipped")
            elif info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                written.append(target)
    return written


def unpack_competition(files: list[Path], dest: Path, *, warn: Callable[[str], None] = print) -> None:
    """Unpack downloaded competition files into ``dest`` as ``train/``, ``test/``, ``sample_submission.csv``.

    Zip files are extracted, and zips they contain at the top level (Redux ships ``train.zip`` and
    ``test.zip`` inside the competition zip) are extracted in turn and deleted. A ``train.zip`` or
    ``test.zip`` whose members are not under ``train/`` (``test/``) goes into that folder. Other files are
    moved into ``dest``.
    """
    dest = dest.resolve()  # extracted paths come back resolved; nested zips are recognised by their parent
    queue = [(Path(f), 0) for f in files]
    while queue:
        path, depth = queue.pop(0)
        if not zipfile.is_zipfile(path):
            shutil.move(str(path), str(dest / path.name))
            continue
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
        inside = path.stem in SPLITS and not all(n.startswith(f"{path.stem}/") for n in names)
        extracted = extract_zip(path, dest / path.stem if inside else dest, warn=warn)
        if path.parent == dest:
            path.unlink()  # a nested zip extracted in place: only its contents are kept
        # subtle: one level of nesting only, so an archive that contains itself cannot loop forever.
        if depth == 0:
            queue += [(p, 1) for p in extracted if p.suffix == ".zip" and p.parent == dest]


def download_competition(*, competition: str, dest: Path | str, warn: Callable[[str], None] = print) -> Path:
    """Download ``competition``'s files and unpack them into ``dest``; return ``dest``.

    Refuses a ``dest`` that already holds ``train/`` or ``test/``, so nothing is mixed or overwritten.
    """
    # subtle: the slug names the staging folder that is deleted afterwards; '..' or '/' must never reach it.
    check_name("competition", competition)
    dest = Path(dest)
    for split in SPLITS:
        if (dest / split).exists():
            raise KitError(f"{dest / split} already exists; remove it or choose another --dest")
    api = load_api()
    staging = dest / f".download-{competition}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            api.competition_download_files(competition, path=str(staging), quiet=False)
        except Exception as exc:  # any failure of the client: mapped to one line below
            raise explain_error(exc, competition=competition, action=f"downloading into {dest}") from None
        files = sorted(p for p in staging.iterdir() if p.is_file())
        if not files:
            raise KitError(f"Kaggle sent no files for competition '{competition}'")
        unpack_competition(files, dest, warn=warn)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
