"""``kaggle-kit status``: what an experiment holds, what of it is stale, and the one command to run next.

:func:`experiment_status` reads the experiment through the store's loaders (and the data folder through
:func:`kaggle_kit.data.discover`) into a :class:`Status` of plain values; :func:`render_text` prints it in 80
columns and :func:`render_json` as JSON with the same content. Read-only: it takes no lock, writes nothing and
loads no Keras. It never raises on a half-finished or damaged experiment: what cannot be read is shown as
'broken' with the command that writes it again, a folder without its manifest as 'unfinished'.

The next command is the first stage that is missing, broken or stale, in the order the pipeline runs:
features -> cv (with its fold plan) -> blend -> submit. Stale means made from inputs that changed since:
features whose images are no longer the data folder's, cv models made on another fold plan or on feature sets
extracted again since, a blend made from other cv results, a submission older than the blend.
"""

from __future__ import annotations

import json
import math
import shlex
import textwrap
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kaggle_kit import store
from kaggle_kit.artifacts import KitError

WIDTH = 80
OK, STALE, UNFINISHED, BROKEN = "ok", "stale", "unfinished", "broken"
# subtle: status reads whatever a crash, a older version or a hand edit left on disk; a manifest that is valid
# JSON with values of the wrong type fails as one of these, and is shown as broken instead of a traceback.
_READ_ERRORS = (KitError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KitError):
        return str(exc)
    return f"unexpected content ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class DataInfo:
    """The competition folder: ``classes`` maps each class to its training images, the positive one last."""

    folder: str
    source: str  # 'experiment' (experiment.json names it), 'default' (./data) or 'unreadable'
    layout: str | None = None
    positive: str | None = None
    classes: dict[str, int] = field(default_factory=dict)
    n_train: int | None = None
    n_test: int | None = None
    sample_submission: bool | None = None
    skipped: int = 0
    state: str = OK
    reason: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    backbone: str | None = None
    size: int | None = None
    layer: str | None = None
    pool: str | None = None
    tta: str | None = None
    views: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    width: int | None = None
    images_per_second: float | None = None
    unreadable: int | None = None
    state: str = OK
    reason: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class PlanInfo:
    n_folds: int | None = None
    repeats: int | None = None
    seed: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    state: str = OK
    reason: str | None = None
    command: str | None = None
    groups: str | None = None  # the --groups pattern of a group-wise plan
    n_groups: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A cv model; ``metric_score`` is its OOF score on the experiment's recorded metric, where one is."""

    model: str
    head: str | None = None
    features: list[str] = field(default_factory=list)
    oof_logloss: float | None = None
    oof_accuracy: float | None = None
    metric_score: float | None = None
    seconds: float | None = None
    state: str = OK
    reason: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class BlendInfo:
    method: str | None = None
    calibration: str | None = None
    clip: float | None = None
    metric: str | None = None
    models: list[str] = field(default_factory=list)
    n_folds: int | None = None
    ladder: list[dict[str, Any]] = field(default_factory=list)
    state: str = OK
    reason: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class SubmissionInfo:
    path: str
    rows: int | None = None
    modified: str | None = None
    earlier: int = 0
    state: str = OK
    reason: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class NextStep:
    """The one command to run next (None: nothing to do) and why, in a sentence."""

    command: str | None
    why: str


@dataclass(frozen=True)
class Status:
    """Everything ``kaggle-kit status`` shows; ``plan``, ``blend``, ``submission`` None where there is none.

    Each item has a ``state`` ('ok', 'stale', 'unfinished', 'broken'), the ``reason`` when it is not 'ok', and
    the ``command`` that makes it (again), spelt as a user types it (the data folder's: only when it cannot be
    read). ``next`` is the one to run now.
    """

    experiment: str
    path: str
    exists: bool
    metric: str | None
    data: DataInfo
    features: list[FeatureInfo]
    plan: PlanInfo | None
    models: list[ModelInfo]
    blend: BlendInfo | None
    submission: SubmissionInfo | None
    next: NextStep

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- reading
def _data(exp_dir: Path) -> tuple[DataInfo, Any, str | None]:
    """The data folder's record, the discovered Dataset (or None) and its image-list hash (or None)."""
    from kaggle_kit.data import discover_remembered

    fix = store.command(exp_dir, "features", "--data", "DIR")
    try:
        remembered = store.load_experiment(exp_dir)
    except _READ_ERRORS as exc:
        info = DataInfo(folder=str(store.DEFAULT_DATA), source="unreadable", state=BROKEN, command=fix,
                        reason=_describe(exc))
        return info, None, None
    source = "experiment" if remembered else "default"
    settings = store.DataSettings(data_dir=store.DEFAULT_DATA) if remembered is None else remembered
    folder, positive = settings.data_dir, settings.positive
    try:
        dataset = discover_remembered(settings)
        image_hash = dataset.image_list_hash()
    except _READ_ERRORS as exc:
        return DataInfo(folder=str(folder), source=source, positive=positive, state=BROKEN,
                        reason=_describe(exc), command=fix), None, None
    counts = {cls: int((dataset.y == label).sum()) for label, cls in enumerate(dataset.classes)}
    info = DataInfo(folder=str(folder), source=source, layout=dataset.layout,
                    positive=dataset.positive, classes=counts, n_train=dataset.n_train, n_test=dataset.n_test,
                    sample_submission=dataset.has_sample_submission, skipped=len(dataset.warnings))
    return info, dataset, image_hash


def _features(exp_dir: Path, image_hash: str | None) -> list[FeatureInfo]:
    """Each feature set's record; stale ones only where the data folder's ``image_hash`` is known."""
    root = store.features_root(exp_dir)
    unfinished = store.unfinished_folders(root)
    rows = []
    for name in sorted(store.finished_folders(root) + unfinished):
        try:
            out = store.features_dir(exp_dir, name)
            rerun = store.features_rerun(out)
        except _READ_ERRORS:
            rerun = None  # a folder name the kit would never make
        if name in unfinished:
            rows.append(FeatureInfo(name=name, state=UNFINISHED, command=rerun,
                                    reason="an extraction that did not finish: the command that started it "
                                    "resumes it"))
            continue
        try:
            fs = store.load_features(out)
            info = FeatureInfo(
                name=name, command=rerun, backbone=fs.backbone, size=fs.input_size,
                layer=fs.layer, pool=fs.pool, tta=fs.tta, views=len(fs.view_suffixes), n_train=fs.n_train,
                n_test=fs.n_test, width=fs.width, images_per_second=fs.images_per_second,
                unreadable=len(fs.unreadable("train")) + len(fs.unreadable("test")),
            )
            stale = store.features_stale_reason(fs, image_hash) if image_hash is not None else None
        except _READ_ERRORS as exc:
            rows.append(FeatureInfo(name=name, state=BROKEN, reason=_describe(exc), command=rerun))
            continue
        rows.append(replace(info, state=STALE, reason=stale) if stale else info)
    return rows


def _plan(exp_dir: Path, dataset: Any) -> tuple[PlanInfo | None, Any]:
    if not store.has_plan(exp_dir):
        return None, None
    fix = store.command(exp_dir, "cv")
    try:
        plan = store.load_plan(exp_dir)
        info = PlanInfo(command=fix, n_folds=plan.n_folds, repeats=plan.repeats, seed=plan.seed,
                        n_train=plan.n_train, n_test=plan.n_test, groups=plan.groups, n_groups=plan.n_groups)
        current = dataset is None or plan.matches(y=dataset.y, train_ids=dataset.train_ids,
                                                  test_ids=dataset.test_ids, n_folds=plan.n_folds,
                                                  repeats=plan.repeats, seed=plan.seed, groups=plan.groups)
    except _READ_ERRORS as exc:
        return PlanInfo(state=BROKEN, reason=_describe(exc), command=fix), None
    if not current:
        info = replace(info, state=STALE, reason="made for other training labels or ids than the data folder now holds")
    return info, plan


def _folder_model(exp_dir: Path, model: str, feature_sets: list[str]) -> tuple[str | None, list[str], str]:
    """Head, feature sets and re-run command of a model known only by its folder name ``<set>__<head>``."""
    base, sep, head = model.rpartition("__")
    if not (sep and base and head):
        return None, [], store.command(exp_dir, "cv")
    features = feature_sets if base == store.CONCAT_MODEL else [base]
    return head, features, store.cv_command(exp_dir, model=model, head=head, features=features)


def _models(exp_dir: Path, plan: Any, feature_sets: list[str],
            metric: str | None) -> tuple[list[ModelInfo], dict[str, Any]]:
    """Each model's record, and the current ones (finished and not stale) as loaded CvResults."""
    root = store.cv_root(exp_dir)
    rows, current = [], {}
    unfinished = store.unfinished_folders(root)
    for model in sorted(store.finished_folders(root) + unfinished):
        head, features, rerun = _folder_model(exp_dir, model, feature_sets)
        if model in unfinished:
            rows.append(ModelInfo(model=model, head=head, features=features, state=UNFINISHED, command=rerun,
                                  reason="a cv run that did not finish"))
            continue
        try:
            result, stale = store.inspect_cv_result(exp_dir, model, plan=plan)
            rerun = store.cv_command(exp_dir, model=model, head=result.head, features=result.features)
            extra = result.scores.get(f"oof_{metric}") if metric not in (None, "logloss", "accuracy") else None
            info = ModelInfo(model=model, command=rerun, head=result.head, features=list(result.features),
                             oof_logloss=result.oof_logloss, oof_accuracy=result.oof_accuracy,
                             metric_score=extra, seconds=result.seconds)
        except _READ_ERRORS as exc:
            rows.append(ModelInfo(model=model, head=head, features=features, state=BROKEN, reason=_describe(exc),
                                  command=rerun))
            continue
        if stale:
            info = replace(info, state=STALE, reason=stale)
        else:
            current[model] = result
        rows.append(info)
    return rows, current


def _blend(exp_dir: Path, plan: Any, current: dict[str, Any]) -> tuple[BlendInfo | None, float | None]:
    """The blend's record and its manifest's modification time (None: no finished blend)."""
    if not store.has_blend(exp_dir):
        return None, None
    fix = store.command(exp_dir, "blend")
    try:
        record, stale = store.inspect_blend(exp_dir, plan=plan, current=current)
        mtime = (record.path / store.MANIFEST).stat().st_mtime
        info = BlendInfo(command=fix, method=record.method, calibration=record.calibration, clip=record.clip,
                         metric=record.metric, models=list(record.models), n_folds=record.n_folds,
                         ladder=[asdict(step) for step in record.ladder])
    except _READ_ERRORS as exc:
        return BlendInfo(state=BROKEN, reason=_describe(exc), command=fix), None
    if stale:
        info = replace(info, state=STALE, reason=stale)
    return info, mtime


def _submission(exp_dir: Path, root: Path | str, blend_mtime: float | None) -> SubmissionInfo | None:
    from kaggle_kit.submit import default_submissions

    fix = store.command(exp_dir, "submit")
    try:
        files = default_submissions(exp_dir.name, root=root)
    except _READ_ERRORS as exc:
        return SubmissionInfo(path=str(Path(root) / "submissions"), state=BROKEN, reason=_describe(exc),
                              command=fix)
    if not files:
        return None
    path = files[0]
    try:
        mtime = path.stat().st_mtime
        with open(path, "rb") as fh:
            lines = fh.read().splitlines()
        rows = max(len(lines) - 1, 0)
    except _READ_ERRORS as exc:
        return SubmissionInfo(path=str(path), state=BROKEN, reason=_describe(exc), command=fix)
    info = SubmissionInfo(path=str(path), command=fix, rows=rows, earlier=len(files) - 1,
                          modified=datetime.fromtimestamp(mtime).isoformat(timespec="seconds"))
    if blend_mtime is not None and mtime < blend_mtime:
        info = replace(info, state=STALE, reason="older than the blend")
    return info


def experiment_status(exp_dir: Path, *, root: Path | str = ".") -> Status:
    """Read the experiment in ``exp_dir`` (and ``<root>/submissions/``) without writing anything."""
    exp_dir = Path(exp_dir)
    try:
        metric = store.recorded_metric(exp_dir)
    except _READ_ERRORS:
        metric = None  # experiment.json's own problem is the data record's
    data, dataset, image_hash = _data(exp_dir)
    features = _features(exp_dir, image_hash)
    plan_info, plan = _plan(exp_dir, dataset)
    feature_sets = [f.name for f in features if f.state in (OK, STALE)]
    models, current = _models(exp_dir, plan, feature_sets, metric)
    blend, blend_mtime = _blend(exp_dir, plan, current)
    submission = _submission(exp_dir, root, blend_mtime)
    step = next_step(exp_dir, data=data, features=features, plan=plan_info, models=models, blend=blend,
                     submission=submission)
    return Status(experiment=exp_dir.name, path=str(exp_dir), exists=exp_dir.is_dir(), metric=metric, data=data,
                  features=features, plan=plan_info, models=models, blend=blend, submission=submission, next=step)


# ------------------------------------------------------------------------------------------- next command
def _head_option(m: ModelInfo) -> str | None:
    if m.head is None:
        return None
    concat = m.model == store.model_name(store.CONCAT_MODEL, m.head)
    return store.concat_head_option(m.head) if concat else m.head


def _heads(models: list[ModelInfo]) -> list[str]:
    """The ``--head`` options of ``models``, heads on one feature set first (as cv's own defaults list them)."""
    options = dict.fromkeys(h for h in map(_head_option, models) if h)
    return sorted(options, key=lambda h: h.startswith(store.CONCAT_MODEL))


def _cv_command(exp_dir: Path, feature_sets: list[str], selected: list[str] | None,
                heads: list[str] | None) -> str:
    """``kaggle-kit cv`` with ``--backbone``/``--head`` only where they differ from cv's defaults."""
    from kaggle_kit.cv import model_specs

    options = []
    if selected is not None and selected != feature_sets:
        options += [w for name in selected for w in ("--backbone", name)]
    chosen = selected if selected is not None else feature_sets
    if len(chosen) < 2:  # a concat head needs two feature sets (one may have been removed since)
        heads = [h for h in heads or () if not h.startswith(store.CONCAT_MODEL)]
    if heads and {s.name for s in model_specs(chosen, heads)} != {s.name for s in model_specs(chosen, None)}:
        options += [w for h in heads for w in ("--head", h)]
    return store.command(exp_dir, "cv", *options)


def _targeted_cv(exp_dir: Path, feature_sets: list[str], models: list[ModelInfo],
                 targets: list[ModelInfo]) -> str:
    """One cv command that recomputes exactly ``targets`` (it may keep others, which cv takes from its cache),
    or, when no such command exists, the first target's own."""
    from kaggle_kit.cv import model_specs

    heads = _heads(targets)
    concat = [m for m in targets if m.model.startswith(f"{store.CONCAT_MODEL}__")]
    selected = list(concat[0].features) if concat else []
    selected += sorted({f for m in targets for f in m.features} - set(selected))
    known = {m.model: m for m in models}
    wanted = {m.model for m in targets}
    try:
        specs = model_specs(selected, heads)
    except KitError:
        specs = None
    # It fits when it computes every target, no model that does not exist yet, and leaves every other model as
    # it is (a concat model over other feature sets would be made again over these).
    fits = (specs is not None and wanted <= {s.name for s in specs}
            and all(s.name in known and (s.name in wanted or known[s.name].features == list(s.features))
                    for s in specs))
    if fits and set(selected) <= set(feature_sets):
        return _cv_command(exp_dir, feature_sets, selected, heads)
    return targets[0].command or store.command(exp_dir, "cv")


def next_step(exp_dir: Path, *, data: DataInfo, features: list[FeatureInfo], plan: PlanInfo | None,
              models: list[ModelInfo], blend: BlendInfo | None, submission: SubmissionInfo | None) -> NextStep:
    """The first stage that is missing, broken or stale, and the command that makes or refreshes it."""
    from kaggle_kit.features import DEFAULT_BACKBONE

    data_fix = data.state != OK
    # A feature set's own command with --data DIR: cached when the images are the same, so all it does is
    # point the experiment at the folder (experiment.json).
    again = next((f.command for f in features if f.command), None)
    point = f"{again} --data DIR" if again else store.command(exp_dir, "features", "--backbone", DEFAULT_BACKBONE,
                                                              "--data", "DIR")
    # ---- features
    if data.source == "unreadable":
        return NextStep(point, f"delete {exp_dir / 'experiment.json'}, then run this to write it again (every "
                        f"command reads it, and it cannot be read: {data.reason})")
    if not features:
        options = ["--backbone", DEFAULT_BACKBONE] + (["--data", "DIR"] if data_fix else [])
        why = "no feature sets yet" + (f"; the data folder: {data.reason}" if data_fix else "")
        return NextStep(store.command(exp_dir, "features", *options), why)
    for f in features:
        if f.state != OK and f.command:
            return NextStep(f.command, f"feature set '{f.name}' is {f.state}: {f.reason}")
    # ---- cv and its fold plan
    feature_sets = [f.name for f in features if f.state == OK]
    heads = _heads(models) or None
    used = {name for m in models for name in m.features}
    uncovered = [name for name in feature_sets if name not in used]
    targets = [m for m in models if m.state != OK]
    step = None
    if not models:
        step = NextStep(_cv_command(exp_dir, feature_sets, None, None), "no cv models yet")
    elif plan is None or plan.state != OK:
        why = "no fold plan" if plan is None else f"the fold plan is {plan.state}: {plan.reason}"
        step = NextStep(_cv_command(exp_dir, feature_sets, None, heads), why)
    elif uncovered:
        step = NextStep(_cv_command(exp_dir, feature_sets, None, heads),
                        f"no cv model uses the features {', '.join(uncovered)}")
    elif targets:
        names = ", ".join(f"{m.model} ({m.state})" for m in targets)
        step = NextStep(_targeted_cv(exp_dir, feature_sets, models, targets), f"cv models to refresh: {names}")
    if step is not None:
        if data_fix:
            return NextStep(point, f"cv reads the data folder, which cannot be read: {data.reason}")
        return step
    # ---- blend, submission
    if blend is None:
        return NextStep(store.command(exp_dir, "blend"), "no blend yet")
    if blend.state != OK:
        return NextStep(blend.command, f"the blend is {blend.state}: {blend.reason}")
    if submission is None:
        return NextStep(store.command(exp_dir, "submit"), f"no submission of '{exp_dir.name}' in submissions/ yet")
    if submission.state != OK:
        return NextStep(submission.command, f"the latest submission is {submission.state}: {submission.reason}")
    upload = store.command(exp_dir, "submit", "--upload", "-m", "MESSAGE")
    return NextStep(None, f"nothing to do: upload {submission.path} to Kaggle, or let '{upload}' write and "
                    "upload a new one")


# ---------------------------------------------------------------------------------------------- rendering
def render_json(status: Status) -> list[str]:
    """The status as one JSON document (non-finite numbers as null), in lines."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(status.to_json()), indent=2).splitlines()


def _elide(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in its middle ('efficientnet...__logreg'): names differ at the end."""
    if len(text) <= width:
        return text
    keep = width - 3
    return f"{text[:(keep + 1) // 2]}...{text[len(text) - keep // 2:]}" if keep > 1 else text[:width]


def _wrap(text: str, indent: str = "", later: str | None = None) -> list[str]:
    later = indent + "  " if later is None else later
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=later, break_on_hyphens=False) \
        or [indent.rstrip()]


def _command_lines(prefix: str, command: str) -> list[str]:
    """``prefix`` + ``command`` in lines of at most 80 characters, continued with '\\' so that the lines, pasted
    into a shell, are the same command (a word too long for a line is split inside it: bash joins it again)."""
    lines, line, fresh = [], prefix, True
    for word in map(shlex.quote, shlex.split(command)):
        sep = "" if fresh else " "
        if len(line) + len(sep) + len(word) + 2 <= WIDTH:  # room for a ' \\' after it
            line, fresh = line + sep + word, False
            continue
        if not fresh:
            lines.append(line + " \\")
            line = "    "
        # subtle: a backslash-newline inside quotes would stay in the word; names the kit accepts need none
        while len(line) + len(word) + 1 > WIDTH and "'" not in word:
            cut = WIDTH - 1 - len(line)
            lines.append(line + word[:cut] + "\\")
            line, word = "", word[cut:]
        line, fresh = line + word, False
    return [*lines, line]


def _number(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _flag(lines: list[str], item: Any, indent: str = "    ") -> None:
    if item.state != OK:
        lines += _wrap(f"{item.state.upper()}: {item.reason}", indent, indent + "  ")


def render_text(status: Status) -> list[str]:
    """The status for a terminal: every line at most 80 characters."""
    out = _wrap(f"experiment '{status.experiment}': {status.path}" + ("" if status.exists else " (not created yet)"))
    d = status.data
    where = {"experiment": "the experiment's", "default": "the default", "unreadable": "experiment.json unreadable"}
    out += _wrap(f"data: {d.folder} ({where[d.source]})")
    if d.state == OK:
        classes = ", ".join(f"{c} {n:,}" for c, n in d.classes.items())
        order = "; sample_submission.csv gives the test order" if d.sample_submission else ""
        out += _wrap(f"{d.layout} layout, positive class '{d.positive}'{order}", "  ")
        out += _wrap(f"train {d.n_train:,} images ({classes}), test {d.n_test:,}", "  ")
        if d.skipped:
            out += _wrap(f"{d.skipped} file(s) skipped (the stages print why)", "  ")
    _flag(out, d, "  ")

    count = len(status.features)
    out.append(f"features: {count} set{'s' if count != 1 else ''}" if count else "features: none yet")
    if status.features:
        out.append(f"  {'name':<20} {'backbone':<18} {'size':>4} {'tta':<4} {'train':>7} {'test':>6} {'width':>5}"
                   f" {'img/s':>6}")
        for f in status.features:
            size = _number(f.size, "d")
            out.append(f"  {_elide(f.name, 20):<20} {_elide(f.backbone or '-', 18):<18} {size:>4} "
                       f"{f.tta or '-':<4} {_number(f.n_train, ',d'):>7} {_number(f.n_test, ',d'):>6} "
                       f"{_number(f.width, 'd'):>5} {_number(f.images_per_second, '.1f'):>6}")
            details = ([f"layer {f.layer}"] if f.layer else []) + \
                ([f"{f.pool} pooling"] if f.pool not in (None, store.DEFAULT_POOL) else [])
            if details:
                out += _wrap(", ".join(details), "    ")
            _flag(out, f)

    p = status.plan
    if p is None:
        out.append("fold plan: none yet")
    elif p.state == BROKEN:
        out.append("fold plan: broken")
    else:
        grouped = f", by {p.n_groups} groups of --groups {shlex.quote(p.groups)}" if p.groups else ""
        out += _wrap(f"fold plan: {p.n_folds} folds x {p.repeats} repeat{'s' if p.repeats != 1 else ''}, seed "
                     f"{p.seed}{grouped} ({p.n_train:,} train, {p.n_test:,} test rows)")
    if p is not None:
        _flag(out, p, "  ")

    count = len(status.models)
    out.append(f"cv: {count} model{'s' if count != 1 else ''}" if count else "cv: none yet")
    if status.models:
        metric = status.metric if any(m.metric_score is not None for m in status.models) else None
        name_width = 40 - (10 if metric else 0)
        header = f"  {'model':<{name_width}} {'log loss':>9} {'accuracy':>9}" + (f" {metric[:9]:>9}" if metric else "")
        out.append(header + f" {'seconds':>8}")
        for m in status.models:
            row = (f"  {_elide(m.model, name_width):<{name_width}} {_number(m.oof_logloss, '.5f'):>9} "
                   f"{_number(m.oof_accuracy, '.2%'):>9}")
            if metric:
                row += f" {_number(m.metric_score, '.5f'):>9}"
            out.append(row + f" {_number(m.seconds, '.1f'):>8}")
            _flag(out, m)

    b = status.blend
    if b is None:
        out.append("blend: none yet")
    elif b.state == BROKEN:
        out.append("blend: broken")
    else:
        clip = f"clip {b.clip:.4g}" if b.clip is not None else "no clip"
        out += _wrap(f"blend: {b.method}, calibration {b.calibration}, {clip} ({len(b.models)} models, "
                     f"{b.n_folds} folds)")
        metric = {"logloss": "log loss", "auc": "AUC", "accuracy": "accuracy"}.get(b.metric or "logloss", b.metric)
        out.append(f"  {'step':<18} {metric[:8]:>8}  (out of fold, cross-fitted)")
        for step in b.ladder:
            lead = f"  {_elide(step['step'], 18):<18} {_number(step['score'], '.5f'):>8}  "
            out.append(lead + _elide(step["detail"], WIDTH - len(lead)))
    if b is not None:
        _flag(out, b, "  ")

    s = status.submission
    if s is None:
        out.append("submission: none yet")
    else:
        out += _wrap(f"submission: {s.path}")
        if s.rows is not None:
            out.append(f"  {s.rows:,} rows, written {s.modified.replace('T', ' ')}"
                       + (f" ({s.earlier} earlier)" if s.earlier else ""))
        _flag(out, s, "  ")

    n = status.next
    if n.command is None:
        out += _wrap(f"next: {n.why}", "", "  ")
    else:
        out += _command_lines("next: ", n.command)
        out += _wrap(f"({n.why})", "  ", "   ")
    return out
