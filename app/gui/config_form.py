"""The New run page: a form generated from core.config.RunConfig, a YAML view kept in sync both ways,
rendered launch files, the pre-flight estimate, Save/Open and Launch.

The page keeps the config as a plain mapping (what the YAML holds, invalid values included) and validates
it with core.config.validate_data on every change; the schema's messages appear under their fields.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from PySide6.QtCore import QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.theme import monospace_font
from app.gui.workers import WorkContext, Worker
from core.config import (
    MAX_CONFIG_BYTES,
    SECTIONS,
    ConfigError,
    Problem,
    RunConfig,
    dump_yaml,
    parse_yaml_text,
    validate_data,
)
from core.fsutil import atomic_write_text

log = logging.getLogger(__name__)

ERROR_STYLE = "color: #d1242f;"
TOP_FIELDS = ("name", "description", "preset")
SECTION_TITLES = {
    "run": "Run", "model": "Model", "data": "Data", "training": "Training", "deepspeed": "DeepSpeed",
    "attention": "Attention", "cluster": "Cluster shape", "evaluation": "Evaluation",
}
VALIDATE_DELAY_MS = 0
YAML_PARSE_DELAY_MS = 250
PREVIEW_DELAY_MS = 150
CHECK_DELAY_MS = 400  # the launch guardrails read the profile's stored check (and re-run it once a day)


# ------------------------------------------------------------------------------------ schema walking


@dataclass(frozen=True)
class FieldSpec:
    """One schema field as the form sees it."""

    path: str
    name: str
    kind: str  # section | literal | bool | int | float | str | number_or_literal | list_str | list_model | dict_str
    optional: bool
    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    model: type[BaseModel] | None = None
    show_if: tuple[tuple[str, Any], ...] = ()
    widget: str | None = None


def show_if_met(spec: FieldSpec, value_of: Callable[[str], Any]) -> bool:
    """Whether a field with `show_if` hints applies: each named field has the value given, or one of the values
    when a list is given (`{"backend": ["slurm", "hostfile"]}`)."""
    for path, want in spec.show_if:
        value = value_of(path)
        if isinstance(want, (list, tuple)) and not isinstance(value, (list, tuple)):
            if value not in want:
                return False
        elif value != want:
            return False
    return True


def _ui_hints(info: Any) -> dict[str, Any]:
    extra = info.json_schema_extra
    return dict(extra.get("ui", {})) if isinstance(extra, dict) else {}


def _field_default(info: Any) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, list):
            return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return PydanticUndefined


def field_spec(path: str, name: str, info: Any) -> FieldSpec:
    ann = info.annotation
    optional = False
    args: tuple[Any, ...] = (ann,)
    if get_origin(ann) in (typing.Union, types.UnionType):
        args = tuple(a for a in get_args(ann) if a is not type(None))
        optional = len(args) < len(get_args(ann))
    hints = _ui_hints(info)
    common = {
        "path": path, "name": name, "optional": optional, "default": _field_default(info),
        "description": info.description or "", "show_if": tuple((hints.get("show_if") or {}).items()),
        "widget": hints.get("widget"),
    }
    if len(args) == 1:
        (t,) = args
        if isinstance(t, type) and issubclass(t, BaseModel):
            return FieldSpec(kind="section", model=t, **common)
        if get_origin(t) is Literal:
            return FieldSpec(kind="literal", choices=get_args(t), **common)
        if t is bool:
            return FieldSpec(kind="bool", **common)
        if t in (int, float, str):
            return FieldSpec(kind=t.__name__, **common)
        if get_origin(t) is dict:
            return FieldSpec(kind="dict_str", **common)
        if get_origin(t) is list:
            (item,) = get_args(t)
            if isinstance(item, type) and issubclass(item, BaseModel):
                return FieldSpec(kind="list_model", model=item, **common)
            return FieldSpec(kind="list_str", **common)
    literals = tuple(c for a in args if get_origin(a) is Literal for c in get_args(a))
    numeric = [a for a in args if a in (int, float)]
    if numeric and literals:
        return FieldSpec(kind="number_or_literal", choices=(*literals, numeric[0].__name__), **common)
    return FieldSpec(kind="str", **common)


def model_specs(model: type[BaseModel], prefix: str) -> list[FieldSpec]:
    return [field_spec(f"{prefix}.{n}" if prefix else n, n, info) for n, info in model.model_fields.items()]


# ------------------------------------------------------------------------------------ mapping helpers


def get_path(data: dict[str, Any], path: str, default: Any = None) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path; PydanticUndefined removes the key (the schema default applies)."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is PydanticUndefined:
                return
            child = node[part] = {}
        node = child
    if value is PydanticUndefined:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _format_number(value: Any) -> str:
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return str(value)


# ------------------------------------------------------------------------------------------ editors


class FieldEditor(QWidget):
    """One field's editor: `value()` returns what goes into the mapping (PydanticUndefined: remove the key)."""

    edited = Signal()

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(parent)
        self.spec = spec
        self.setToolTip(spec.description)
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)

    def value(self) -> Any:
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        raise NotImplementedError


class LineEditor(FieldEditor):
    """str, int, float and number-or-keyword fields; unparsable text goes to the schema as typed."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        self.edit = QLineEdit()
        self.edit.setObjectName(f"field:{spec.path}")
        if spec.default not in (PydanticUndefined, None, ""):
            self.edit.setPlaceholderText(f"default: {_format_number(spec.default)}")
        elif spec.optional:
            self.edit.setPlaceholderText("(not set)")
        self._layout.addWidget(self.edit)
        if spec.widget in ("file", "dir"):
            browse = QToolButton()
            browse.setText("…")
            browse.setToolTip("Browse")
            browse.clicked.connect(self._on_browse_clicked)
            self._layout.addWidget(browse)
        self.edit.textEdited.connect(lambda _text: self.edited.emit())

    def _on_browse_clicked(self) -> None:
        if self.spec.widget == "dir":
            path = QFileDialog.getExistingDirectory(self, self.spec.name, self.edit.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, self.spec.name, self.edit.text())
        if path:
            self.edit.setText(path)
            self.edited.emit()

    def value(self) -> Any:
        text = self.edit.text().strip()
        if not text:
            if self.spec.kind == "str" and not self.spec.optional and self.spec.default is PydanticUndefined:
                return ""  # a required text left empty: the schema says what is wrong
            return None if self.spec.optional and self.spec.default is None else PydanticUndefined
        kind = self.spec.kind
        if kind == "number_or_literal" and text in self.spec.choices:
            return text
        if kind in ("int", "number_or_literal"):
            try:
                return int(text.replace("_", ""))
            except ValueError:
                if kind == "int":
                    return text
        if kind in ("float", "number_or_literal"):
            try:
                return float(text.replace("_", ""))
            except ValueError:
                return text
        return self.edit.text()

    def set_value(self, value: Any) -> None:
        text = "" if value is None or value is PydanticUndefined else (
            _format_number(value) if self.spec.kind != "str" else str(value))
        if self.edit.text() != text:
            self.edit.setText(text)


class ComboEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        self.combo = QComboBox()
        self.combo.setObjectName(f"field:{spec.path}")
        self._choices = list(spec.choices)
        if spec.optional:
            self._choices.insert(0, None)
        for choice in self._choices:
            self.combo.addItem("(not set)" if choice is None else str(choice))
        self._layout.addWidget(self.combo)
        self._layout.addStretch(1)
        self.combo.activated.connect(lambda _i: self.edited.emit())

    def value(self) -> Any:
        choice = self._choices[self.combo.currentIndex()] if self.combo.currentIndex() >= 0 else None
        return PydanticUndefined if choice is None else choice

    def set_value(self, value: Any) -> None:
        if value is PydanticUndefined:
            value = None
        if value in self._choices:
            self.combo.setCurrentIndex(self._choices.index(value))
        else:  # a value the schema rejects (typed in YAML): show it, validation explains
            if self.combo.findText(str(value)) < 0:
                self.combo.addItem(str(value))
                self._choices.append(value)
            self.combo.setCurrentIndex(self._choices.index(value))


class BoolEditor(FieldEditor):
    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        self.check = QCheckBox()
        self.check.setObjectName(f"field:{spec.path}")
        self._layout.addWidget(self.check)
        self._layout.addStretch(1)
        self.check.toggled.connect(lambda _on: self.edited.emit())

    def value(self) -> Any:
        return self.check.isChecked()

    def set_value(self, value: Any) -> None:
        with QSignalBlocker(self.check):
            self.check.setChecked(bool(value) if value is not PydanticUndefined else False)


class PathListEditor(FieldEditor):
    """list[str] of paths: a list with Add…/Remove; items are editable in place."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        self.list = QListWidget()
        self.list.setObjectName(f"field:{spec.path}")
        self.list.setMaximumHeight(84)
        self.list.itemChanged.connect(lambda _item: self.edited.emit())
        buttons = QVBoxLayout()
        add = QPushButton("Add…")
        remove = QPushButton("Remove")
        add.clicked.connect(self._on_add_clicked)
        remove.clicked.connect(self._on_remove_clicked)
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        self._layout.addWidget(self.list, 1)
        self._layout.addLayout(buttons)

    def _on_add_clicked(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Training files", "", "Data (*.jsonl *.json *.parquet *.csv);;All files (*)")
        self.add_paths(paths)

    def add_paths(self, paths: list[str]) -> None:
        for path in paths:
            self._add_item(path)
        if paths:
            self.edited.emit()

    def _add_item(self, text: str) -> None:
        item = QListWidgetItem(text)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        self.list.addItem(item)

    def _on_remove_clicked(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self.edited.emit()

    def value(self) -> Any:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def set_value(self, value: Any) -> None:
        if value == self.value():
            return
        with QSignalBlocker(self.list):
            self.list.clear()
            for path in value if isinstance(value, list) else []:
                self._add_item(str(path))


class WordsEditor(FieldEditor):
    """list[str] that is not paths (hostfile lines, ...): comma-separated in one line."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        self.edit = QLineEdit()
        self.edit.setObjectName(f"field:{spec.path}")
        self.edit.setPlaceholderText("comma-separated")
        self._layout.addWidget(self.edit)
        self.edit.textEdited.connect(lambda _text: self.edited.emit())

    def value(self) -> Any:
        return [w.strip() for w in self.edit.text().split(",") if w.strip()]

    def set_value(self, value: Any) -> None:
        text = ", ".join(map(str, value)) if isinstance(value, list) else ""
        if self.value() != (value if isinstance(value, list) else []):
            self.edit.setText(text)


class KeyValueEditor(FieldEditor):
    """dict[str, str] (a profile's environment variables): one KEY=VALUE per line."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        self.edit = QPlainTextEdit()
        self.edit.setObjectName(f"field:{spec.path}")
        self.edit.setPlaceholderText("KEY=VALUE, one per line")
        self.edit.setFixedHeight(self.edit.fontMetrics().lineSpacing() * 4)
        self._layout.addWidget(self.edit)
        self.edit.textChanged.connect(self.edited.emit)

    def value(self) -> Any:
        # A line without "=" keeps its text as the name, so the schema says which line is wrong.
        pairs = (line.partition("=") for line in self.edit.toPlainText().splitlines() if line.strip())
        return {key.strip(): value for key, _sep, value in pairs}

    def set_value(self, value: Any) -> None:
        if self.value() != (value if isinstance(value, dict) else {}):
            self.edit.setPlainText("\n".join(f"{k}={v}" for k, v in (value or {}).items()))


class ModelListEditor(FieldEditor):
    """list of small models (evaluation.benchmarks): one row per item, its fields side by side."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None):
        super().__init__(spec, parent)
        assert spec.model is not None
        self._item_specs = model_specs(spec.model, "")
        box = QVBoxLayout()
        box.setContentsMargins(0, 0, 0, 0)
        self._rows_layout = QVBoxLayout()
        self._rows_layout.setSpacing(4)
        self._rows: list[tuple[QWidget, list[FieldEditor]]] = []
        add = QPushButton(f"Add {spec.model.__name__.removesuffix('Spec').lower()}")
        add.clicked.connect(self._on_add_clicked)
        box.addLayout(self._rows_layout)
        box.addWidget(add, 0, Qt.AlignmentFlag.AlignLeft)
        self._layout.addLayout(box, 1)
        self.setObjectName(f"field:{spec.path}")

    def _add_row(self, item: dict[str, Any]) -> None:
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        editors = []
        for spec in self._item_specs:
            editor = make_editor(spec)
            editor.set_value(item.get(spec.name, spec.default))
            editor.edited.connect(self.edited)
            if isinstance(editor, LineEditor):
                editor.edit.setPlaceholderText(spec.name)
            layout.addWidget(editor, 0 if spec.kind == "literal" else 1)
            editors.append(editor)
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("Remove")
        remove.clicked.connect(lambda: self._remove_row(row))
        layout.addWidget(remove)
        self._rows_layout.addWidget(row)
        self._rows.append((row, editors))

    def _remove_row(self, row: QWidget) -> None:
        self._rows = [(r, e) for r, e in self._rows if r is not row]
        row.deleteLater()
        self.edited.emit()

    def _on_add_clicked(self) -> None:
        spec0 = self._item_specs[0]
        self._add_row({spec0.name: spec0.choices[0]} if spec0.choices else {})
        self.edited.emit()

    def value(self) -> Any:
        items = []
        for _row, editors in self._rows:
            item = {}
            for editor in editors:
                v = editor.value()
                if v is not PydanticUndefined and v is not None:
                    item[editor.spec.name] = v
            items.append(item)
        return items

    def set_value(self, value: Any) -> None:
        value = value if isinstance(value, list) else []
        if value == self.value():
            return
        for row, _editors in self._rows:
            row.deleteLater()
        self._rows = []
        for item in value:
            self._add_row(item if isinstance(item, dict) else {})


def make_editor(spec: FieldSpec) -> FieldEditor:
    if spec.kind == "literal":
        return ComboEditor(spec)
    if spec.kind == "bool":
        return BoolEditor(spec)
    if spec.kind == "list_str":
        return PathListEditor(spec) if spec.widget == "paths" else WordsEditor(spec)
    if spec.kind == "list_model":
        return ModelListEditor(spec)
    if spec.kind == "dict_str":
        return KeyValueEditor(spec)
    return LineEditor(spec)


# ------------------------------------------------------------------------------------------ the form


class _FieldRow:
    """An editor with its label and the error label shown under it."""

    def __init__(self, spec: FieldSpec, editor: FieldEditor, label: QLabel, error: QLabel, container: QWidget):
        self.spec, self.editor, self.label, self.error, self.container = spec, editor, label, error, container


class SchemaForm(QWidget):
    """The generated form: one group box per section, one row per field, error labels under fields."""

    edited = Signal(str, object)  # path, value (PydanticUndefined: remove)
    section_toggled = Signal(str, bool)  # path of an optional section, present

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows: dict[str, _FieldRow] = {}
        self.groups: dict[str, QGroupBox] = {}
        self.group_errors: dict[str, QLabel] = {}
        self._forms: dict[str, QFormLayout] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(10)
        run_box = self._group("run", SECTION_TITLES["run"], optional=False)
        layout.addWidget(run_box)
        for spec in model_specs(RunConfig, ""):
            if spec.name in TOP_FIELDS:
                self._add_field("run", spec)
        for name, model in SECTIONS.items():
            box = self._group(name, SECTION_TITLES.get(name, name.title()), optional=False, model=model)
            layout.addWidget(box)
            self._add_fields(name, model)
        layout.addStretch(1)

    def _group(self, path: str, title: str, optional: bool, model: type[BaseModel] | None = None) -> QGroupBox:
        box = QGroupBox(title)
        box.setObjectName(f"group:{path}")
        if model is not None and model.__doc__:
            box.setToolTip(model.__doc__.strip().splitlines()[0])
        if optional:
            box.setCheckable(True)
            box.toggled.connect(lambda on, p=path: self.section_toggled.emit(p, on))
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(6)
        error = QLabel()
        error.setObjectName(f"error:{path}")
        error.setStyleSheet(ERROR_STYLE)
        error.setWordWrap(True)
        error.hide()
        form.addRow(error)
        self.groups[path] = box
        self.group_errors[path] = error
        self._forms[path] = form
        return box

    def _add_fields(self, prefix: str, model: type[BaseModel]) -> None:
        for spec in model_specs(model, prefix):
            if spec.kind == "section":
                assert spec.model is not None
                sub = self._group(spec.path, spec.name.replace("_", " ").capitalize(), optional=spec.optional, model=spec.model)
                sub.setToolTip(spec.description)
                self._forms[prefix].addRow(sub)
                self._add_fields(spec.path, spec.model)
            else:
                self._add_field(prefix, spec)

    def _add_field(self, group: str, spec: FieldSpec) -> None:
        if spec.name == "schema_version":
            return
        editor = make_editor(spec)
        container = QWidget()
        box = QVBoxLayout(container)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(editor)
        error = QLabel()
        error.setObjectName(f"error:{spec.path}")
        error.setStyleSheet(ERROR_STYLE)
        error.setWordWrap(True)
        error.hide()
        box.addWidget(error)
        label = QLabel(spec.name.replace("_", " "))
        label.setToolTip(spec.description)
        label.setBuddy(editor)
        self._forms[group].addRow(label, container)
        editor.edited.connect(lambda s=spec, e=editor: self.edited.emit(s.path, e.value()))
        self.rows[spec.path] = _FieldRow(spec, editor, label, error, container)

    # -- model -> UI

    def load(self, data: dict[str, Any]) -> None:
        for path, box in self.groups.items():
            if box.isCheckable():
                with QSignalBlocker(box):
                    box.setChecked(isinstance(get_path(data, path), dict))
        for path, row in self.rows.items():
            value = get_path(data, path, PydanticUndefined)
            if value is PydanticUndefined:
                value = row.spec.default
            with QSignalBlocker(row.editor):
                row.editor.set_value(value)
        self.update_visibility(data)

    def update_visibility(self, data: dict[str, Any]) -> None:
        for row in self.rows.values():
            if not row.spec.show_if:
                continue
            visible = show_if_met(row.spec, lambda p: self.effective(data, p))
            self._forms[row.spec.path.rsplit(".", 1)[0] if "." in row.spec.path else "run"].setRowVisible(row.container, visible)

    def effective(self, data: dict[str, Any], path: str) -> Any:
        value = get_path(data, path, PydanticUndefined)
        if value is PydanticUndefined and path in self.rows:
            return self.rows[path].spec.default
        return value

    def is_field_visible(self, path: str) -> bool:
        row = self.rows[path]
        return not row.container.isHidden() and not row.label.isHidden()

    def show_problems(self, problems: list[Problem]) -> list[Problem]:
        """Put each message under its field (or the nearest enclosing group); returns those placed nowhere."""
        messages: dict[QLabel, list[str]] = {}
        unplaced = []
        for p in problems:
            label = self._label_for(p.path)
            if label is None:
                unplaced.append(p)
            else:
                messages.setdefault(label, []).append(p.message)
        for label in [r.error for r in self.rows.values()] + list(self.group_errors.values()):
            text = "\n".join(messages.get(label, []))
            label.setText(text)
            label.setVisible(bool(text))
        return unplaced

    def _label_for(self, path: str) -> QLabel | None:
        parts = path.split(".") if path else []
        while parts:
            key = ".".join(parts)
            if key in self.rows:
                return self.rows[key].error
            if key in self.group_errors:
                return self.group_errors[key]
            parts.pop()
        return None


# ------------------------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Previews:
    """Rendered launch files and the estimate for one config (crosses from the worker to the UI)."""

    request_id: int
    texts: dict[str, str]


def render_previews(ctx: WorkContext, config: RunConfig) -> Previews:
    """Render ds_config.json, the Slurm script, the hostfile, where the ranks run (the rendezvous host first) and
    the pre-flight estimate (worker thread)."""
    from core.plan import (
        LaunchContext,
        describe_nodes,
        render_ds_config,
        render_hostfile,
        render_slurm_script,
    )

    texts: dict[str, str] = {}
    texts["ds_config.json"] = json.dumps(render_ds_config(config), indent=2)
    hosts = tuple(f"node{i + 1:02d}" for i in range(config.cluster.nodes))
    run_dir = "/home/you/tunedeck/runs/preview"
    slurm = LaunchContext(run_id="preview", run_dir=run_dir, backend="slurm", hosts=hosts)
    texts["Slurm script"] = render_slurm_script(config, slurm)
    hostfile = LaunchContext(run_id="preview", run_dir=run_dir, backend="hostfile", hosts=hosts)
    texts["hostfile"] = render_hostfile(config, hostfile)
    texts["Evaluation"] = render_placement_preview(config, slurm)
    texts["Nodes"] = ("Slurm (sbatch):\n" + "\n".join(f"  {line}" for line in describe_nodes(config, slurm))
                      + "\n\nDeepSpeed hostfile (example host names):\n"
                      + "\n".join(f"  {line}" for line in describe_nodes(config, hostfile)) + "\n")
    from core.estimate import estimate, format_estimate

    texts["Estimate"] = format_estimate(estimate(config))
    return Previews(ctx.request_id, texts)


def render_placement_preview(config: RunConfig, slurm: Any) -> str:
    """Where each backend would run this config's evaluations, and why; the Slurm evaluation job script."""
    from core.placement import PlacementError, resolve_placement
    from core.plan import PlanError, render_eval_slurm

    parts = []
    for backend in ("slurm", "hostfile", "local"):
        try:
            parts.append(resolve_placement(config, backend).describe())
        except PlacementError as exc:
            parts.append(f"evaluation placement on {backend}: cannot work: {exc}")
    try:
        if resolve_placement(config, "slurm").placement == "slurm" and config.evaluation.when != "never":
            parts.append("Slurm evaluation job (eval.slurm, one per checkpoint):\n" + render_eval_slurm(config, slurm))
    except (PlacementError, PlanError):
        pass
    return "\n\n".join(parts)


@dataclass(frozen=True)
class LaunchCheck:
    """The guardrails' findings for one (config, profile), crossing from the worker to the page."""

    request_id: int
    profile: str
    paragraphs: tuple[str, ...]
    checked: str  # when the cluster check behind it ran ("just now", "3 h ago", "never")
    notes: tuple[str, ...] = ()


def check_launch(ctx: WorkContext, config: RunConfig, profile_name: str) -> LaunchCheck:
    """Worker body: remote.preflight for the chosen profile (re-runs its cluster check when a day old)."""
    from remote.preflight import preflight
    from remote.profiles import get_profile
    from remote.runs import apply_profile_shape

    profile = get_profile(profile_name)
    found = preflight(apply_profile_shape(config, profile), profile)
    checked = found.facts.age_text() if found.facts is not None else "never"
    return LaunchCheck(ctx.request_id, profile_name, tuple(f.paragraph() for f in found.findings), checked, found.notes)


class ConfigPage(QWidget):
    """New run: preset picker, generated form, YAML view, previews, Save/Open and Launch."""

    file_opened = Signal(str)
    file_saved = Signal(str)
    launched = Signal(str)  # run id
    problems_changed = Signal(int)
    findings_changed = Signal(int)  # launch guardrail findings for the chosen cluster (-1: could not check)

    def __init__(self, store_provider: Callable[[], Any] | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self._store_provider = store_provider
        self.data: dict[str, Any] = {}
        self.config: RunConfig | None = None
        self.problems: list[Problem] = []
        self.path: Path | None = None
        self._workers: dict[int, Worker] = {}
        self._preview_request = 0
        self._launch_worker: Worker | None = None
        self._check_request = 0
        self.launch_check: LaunchCheck | None = None
        self.refusal_box: QMessageBox | None = None

        # toolbar
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("preset_combo")
        self.preset_combo.setMinimumWidth(170)
        from core.presets import preset_names

        self.preset_combo.addItems(preset_names())
        self.preset_combo.setPlaceholderText("(none)")  # a config from a file that names no known preset
        self.preset_combo.setToolTip("Choosing a preset replaces the form with it (asking first when the form has "
                                     "unsaved changes)")
        # `activated`: the user's choice only (also of the preset already shown: loads it afresh)
        self.preset_combo.activated.connect(self._on_preset_chosen)
        open_button = QPushButton("Open…")
        open_button.clicked.connect(self._on_open_clicked)
        save_button = QPushButton("Save…")
        save_button.clicked.connect(self._on_save_clicked)
        self.profile_combo = QComboBox()
        self.profile_combo.setObjectName("profile_combo")
        self.profile_combo.setMinimumWidth(100)
        self.profile_combo.setToolTip("Cluster profile to launch on (edit them on the Clusters page)")
        self.profile_combo.currentTextChanged.connect(lambda _name: self._check_timer.start())
        self.launch_button = QPushButton("Launch")
        self.launch_button.setObjectName("launch_button")
        self.launch_button.setToolTip("Launch this config on the chosen cluster (Ctrl+L)")
        self.launch_button.clicked.connect(self.launch)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Preset:"))
        bar.addWidget(self.preset_combo)
        bar.addSpacing(8)
        bar.addWidget(open_button)
        bar.addWidget(save_button)
        bar.addStretch(1)
        bar.addWidget(QLabel("Cluster:"))
        bar.addWidget(self.profile_combo)
        bar.addWidget(self.launch_button)

        # status banner
        self.banner = QLabel()
        self.banner.setObjectName("problems_banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.banner.linkActivated.connect(self.reveal_field)
        # What the launch guardrails say for this config on the chosen cluster (the same as Launch will).
        self.findings_label = QLabel()
        self.findings_label.setObjectName("launch_findings")
        self.findings_label.setWordWrap(True)
        self.findings_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # left: the form
        self.form = SchemaForm()
        self.form.edited.connect(self._on_form_edited)
        self.form.section_toggled.connect(self._on_section_toggled)
        scroll = QScrollArea()
        scroll.setWidget(self.form)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(420)
        self.scroll = scroll

        # right: YAML + previews
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.yaml_edit = QPlainTextEdit()
        self.yaml_edit.setObjectName("yaml_edit")
        self.yaml_edit.setFont(monospace_font())
        self.yaml_edit.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.yaml_edit.textChanged.connect(self._on_yaml_changed)
        self.yaml_status = QLabel()
        self.yaml_status.setObjectName("yaml_status")
        self.yaml_status.setWordWrap(True)
        yaml_page = QWidget()
        yl = QVBoxLayout(yaml_page)
        yl.setContentsMargins(0, 4, 0, 0)
        yl.addWidget(self.yaml_edit, 1)
        yl.addWidget(self.yaml_status)
        self.tabs.addTab(yaml_page, "YAML")
        self.previews: dict[str, QPlainTextEdit] = {}
        for title in ("Estimate", "Evaluation", "ds_config.json", "Slurm script", "hostfile", "Nodes"):
            view = QPlainTextEdit()
            view.setObjectName(f"preview:{title}")
            view.setReadOnly(True)
            view.setFont(monospace_font())
            view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
            self.previews[title] = view
            self.tabs.addTab(view, title)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("config_splitter")
        splitter.addWidget(scroll)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([760, 600])
        self.splitter = splitter

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 6)
        layout.addLayout(bar)
        layout.addWidget(self.banner)
        layout.addWidget(self.findings_label)
        layout.addWidget(splitter, 1)

        self._yaml_timer = QTimer(self, singleShot=True, interval=YAML_PARSE_DELAY_MS)
        self._yaml_timer.timeout.connect(self.apply_yaml)
        self._preview_timer = QTimer(self, singleShot=True, interval=PREVIEW_DELAY_MS)
        self._preview_timer.timeout.connect(self._start_previews)
        self._check_timer = QTimer(self, singleShot=True, interval=CHECK_DELAY_MS)
        self._check_timer.timeout.connect(self._start_launch_check)
        self._syncing = False
        # What the form held when last loaded or saved: changes since then are "unsaved" (asked about before a
        # preset or another file replaces them).
        self._baseline: dict[str, Any] | None = None
        self._baseline_text = ""
        self._unparsed: Path | None = None  # an opened file whose YAML does not parse (the form is cleared)
        self.unsaved_box: QMessageBox | None = None  # the unsaved-changes question while it is open
        self.refresh_profiles()

    # ------------------------------------------------------------------ model -> everything

    def set_data(self, data: dict[str, Any], *, from_yaml: bool = False, unmodified: bool = False) -> None:
        """Replace the whole config mapping (preset, file, YAML edit) and update every view; `unmodified`
        makes it the new baseline (nothing to save)."""
        self.data = data
        self._unparsed = None
        self.form.setEnabled(True)
        self.form.load(data)
        self._changed(rewrite_yaml=not from_yaml)
        if unmodified:
            self._mark_unmodified()

    def load_preset(self, name: str) -> None:
        """Replace the form with a preset (no question asked: the preset box and the window ask first)."""
        from core.presets import load_preset

        config = load_preset(name)
        self._show_preset(name)
        self.path = None
        self.set_data(config.model_dump(mode="json", exclude_none=True), unmodified=True)

    def _show_preset(self, name: Any) -> None:
        """The preset box shows the config's preset, or nothing when it names none that is shipped."""
        idx = self.preset_combo.findText(name) if isinstance(name, str) else -1
        with QSignalBlocker(self.preset_combo):
            self.preset_combo.setCurrentIndex(idx)

    def _on_preset_chosen(self, index: int) -> None:
        name = self.preset_combo.itemText(index)
        if not self.confirm_discard(f"load the preset {name}"):
            self._show_preset(self.data.get("preset") if self._unparsed is None else None)
            return
        self.load_preset(name)

    # ------------------------------------------------------------------ unsaved changes

    def _mark_unmodified(self) -> None:
        self._baseline = copy.deepcopy(self.data)
        self._baseline_text = self.yaml_edit.toPlainText()

    def is_modified(self) -> bool:
        """Whether the form or the YAML changed since the config was loaded (preset, file) or saved."""
        if self._yaml_timer.isActive():
            self.apply_yaml()  # YAML typed a moment ago counts
        if self._baseline is None:
            return False
        if self.data != self._baseline:
            return True
        # YAML edits that do not parse leave the data as it was: the text tells
        return bool(self.yaml_status.text()) and self.yaml_edit.toPlainText() != self._baseline_text

    def confirm_discard(self, action: str) -> bool:
        """Before `action` replaces the config: True when there is nothing unsaved, or the user saved it or
        chose to discard it; False when they cancelled (or a save was abandoned)."""
        if not self.is_modified():
            return True
        box = QMessageBox(self)
        box.setObjectName("unsaved_changes")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Unsaved changes")
        where = f" to {self.path.name}" if self.path else ""
        box.setText(f"The run config has changes that are not saved{where}.")
        box.setInformativeText(f"Save them before you {action}?")
        box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        self.unsaved_box = box
        try:
            answer = box.exec()
        finally:
            self.unsaved_box = None
            box.deleteLater()
        if answer == QMessageBox.StandardButton.Discard:
            return True
        if answer == QMessageBox.StandardButton.Save:
            if self.path is not None and self._unparsed is None:
                self.save_file(self.path)
            else:
                self._on_save_clicked()
            return not self.is_modified()
        return False

    def set_field(self, path: str, value: Any) -> None:
        """Set one field from outside the form (e.g. the contamination page attaching its report)."""
        set_path(self.data, path, value)
        self.form.load(self.data)
        self._changed()

    def field_value(self, path: str) -> Any:
        return get_path(self.data, path)

    def _changed(self, rewrite_yaml: bool = True) -> None:
        self.config, self.problems = validate_data(copy.deepcopy(self.data))
        unplaced = self.form.show_problems(self.problems)
        self.form.update_visibility(self.data)
        if rewrite_yaml:
            self._syncing = True
            try:
                self.yaml_edit.setPlainText(dump_yaml(self.data))
            finally:
                self._syncing = False
            self.yaml_status.clear()
        self._show_banner(unplaced)
        self.launch_button.setEnabled(self.config is not None and self._launch_worker is None)
        self.problems_changed.emit(len(self.problems))
        if self.config is not None:
            self._preview_timer.start()
            self._check_timer.start()
        else:
            for view in self.previews.values():
                view.setPlainText("Fix the problems in the config to see this preview.")
            self.findings_label.clear()

    def _show_banner(self, unplaced: list[Problem]) -> None:
        if not self.problems:
            self.banner.setText("✓ Config is valid")
            self.banner.setTextFormat(Qt.TextFormat.PlainText)
            self.banner.setStyleSheet("color: #1a7f37; padding: 2px;")
            return
        n = len(self.problems)
        placed = [p for p in self.problems if p not in unplaced]
        links = ", ".join(dict.fromkeys(f"<a href='{html.escape(p.path)}'>{html.escape(p.path)}</a>" for p in placed))
        lines = [f"<b>{n} problem{'s' if n != 1 else ''}</b>" + (f" — shown at {links}" if links else "")]
        lines += [f"• {html.escape(p.path or '(top level)')}: {html.escape(p.message)}" for p in unplaced]
        self.banner.setText("<br>".join(lines))
        self.banner.setTextFormat(Qt.TextFormat.RichText)
        self.banner.setStyleSheet(ERROR_STYLE + " padding: 2px;")

    def reveal_field(self, path: str) -> None:
        """Scroll the form to a field (or its group) and focus it: the banner's links call this."""
        row = self.form.rows.get(path)
        target: QWidget | None = row.container if row else None
        parts = path.split(".")
        while target is None and parts:
            key = ".".join(parts)
            target = self.form.rows[key].container if key in self.form.rows else self.form.groups.get(key)
            parts.pop()
        if target is not None:
            self.scroll.ensureWidgetVisible(target, 0, 40)
            target.setFocus()
            if row is not None:
                focus = getattr(row.editor, "edit", None) or getattr(row.editor, "combo", None)
                if focus is not None:
                    focus.setFocus()

    # ------------------------------------------------------------------ UI -> model

    def _on_form_edited(self, path: str, value: Any) -> None:
        set_path(self.data, path, value)
        self._changed()

    def _on_section_toggled(self, path: str, present: bool) -> None:
        if present:
            section = {}
            for p, row in self.form.rows.items():
                if p.startswith(path + "."):
                    v = row.editor.value()
                    if v is not PydanticUndefined and v is not None:
                        section[p[len(path) + 1:]] = v
            set_path(self.data, path, section)
        else:
            set_path(self.data, path, PydanticUndefined)
        self._changed()

    def _on_yaml_changed(self) -> None:
        if not self._syncing:
            self._yaml_timer.start()

    def apply_yaml(self) -> bool:
        """Parse the YAML view; when it is a mapping, it becomes the config (the form follows)."""
        self._yaml_timer.stop()
        problem, data = yaml_problem(self.yaml_edit.toPlainText())
        if problem is not None:
            keeps = ("the form stays empty until it parses" if self._unparsed is not None
                     else "the form keeps the last valid YAML")
            self.yaml_status.setText(f"{problem}; {keeps}")
            self.yaml_status.setStyleSheet(ERROR_STYLE)
            return False
        self.yaml_status.clear()
        self.set_data(data, from_yaml=True)
        return True

    # ------------------------------------------------------------------ previews

    def _start_previews(self) -> None:
        if self.config is None:
            return
        worker = Worker(render_previews, self.config)
        self._preview_request = worker.request_id
        worker.signals.finished.connect(self._on_previews_finished)
        worker.signals.failed.connect(self._on_previews_failed)
        self._track(worker)
        worker.start()

    def _track(self, worker: Worker) -> None:
        self._workers[worker.request_id] = worker
        for sig in (worker.signals.finished, worker.signals.failed, worker.signals.cancelled):
            sig.connect(lambda *args, rid=worker.request_id: self._workers.pop(rid, None))

    def _on_previews_finished(self, request_id: int, previews: Previews) -> None:
        if request_id != self._preview_request:
            return  # a newer config is being rendered
        for title, text in previews.texts.items():
            view = self.previews[title]
            if view.toPlainText() != text:
                bar = view.verticalScrollBar().value()
                view.setPlainText(text)
                view.verticalScrollBar().setValue(bar)

    def _on_previews_failed(self, request_id: int, message: str) -> None:
        if request_id != self._preview_request:
            return
        for view in self.previews.values():
            view.setPlainText(f"Cannot render: {message}")

    # ------------------------------------------------------------------ files

    def _on_open_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run config", str(self.path or ""), "YAML (*.yaml *.yml);;All files (*)")
        if path:
            self.open_file(path)

    def open_file(self, path: str | Path, *, ask: bool = True) -> bool:
        """Show a YAML config file in the form (asking first about unsaved changes when `ask`). A file that
        does not parse leaves nothing of the previous config on screen: the form is emptied and disabled, the
        banner and the YAML view say where it fails. False when nothing was opened."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:  # not into the editor: a huge file would freeze the window
                QMessageBox.warning(self, "Open run config", f"{path} is {size:,} bytes; a run config is at most "
                                    f"{MAX_CONFIG_BYTES:,} bytes (a few KB is usual). Is this the right file?")
                return False
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            QMessageBox.warning(self, "Open run config", f"Cannot read {path}:\n{exc}")
            return False
        if ask and not self.confirm_discard(f"open {path.name}"):
            return False
        self.path = path
        self._syncing = True  # the text is applied right here, not by the typing timer
        try:
            self.yaml_edit.setPlainText(text)
        finally:
            self._syncing = False
        problem, data = yaml_problem(text)
        if problem is None:
            self.yaml_status.clear()
            self.set_data(data, from_yaml=True, unmodified=True)
            self._show_preset(data.get("preset"))
        else:
            self._show_unparsed(path, problem)
            self._mark_unmodified()
            self.tabs.setCurrentIndex(0)
        self.file_opened.emit(str(path))
        return True

    def _show_unparsed(self, path: Path, problem: str) -> None:
        """An opened file whose YAML does not parse: no form, no previews, no launch, the reason in the banner."""
        self._unparsed = path
        self.data, self.config, self.problems = {}, None, []
        self.form.load({})
        self.form.show_problems([])
        self.form.setEnabled(False)
        self._show_preset(None)
        self.yaml_status.setText(f"{problem}; the form stays empty until it parses")
        self.yaml_status.setStyleSheet(ERROR_STYLE)
        self.banner.setTextFormat(Qt.TextFormat.PlainText)
        self.banner.setText(f"{path.name} is not a run config: {problem}. Fix it in the YAML view.")
        self.banner.setStyleSheet(ERROR_STYLE + " padding: 2px;")
        self.launch_button.setEnabled(False)
        self.problems_changed.emit(0)
        for view in self.previews.values():
            view.setPlainText("Fix the problems in the config to see this preview.")

    def _on_save_clicked(self) -> None:
        default = str(self.path) if self.path else str(Path.home() / f"{self.data.get('name', 'run')}.yaml".replace(" ", "-"))
        path, _ = QFileDialog.getSaveFileName(self, "Save run config", default, "YAML (*.yaml *.yml)")
        if path:
            self.save_file(path)

    def save_file(self, path: str | Path) -> None:
        """Write the YAML (temp + rename); a config with problems is saved too, after a warning."""
        path = Path(path)
        text = self.config.to_yaml() if self.config is not None else self.yaml_edit.toPlainText()
        atomic_write_text(path, text)
        self.path = path
        self._baseline = copy.deepcopy(self.data)
        self._baseline_text = self.yaml_edit.toPlainText()
        self.file_saved.emit(str(path))

    # ------------------------------------------------------------------ launch

    def refresh_profiles(self) -> None:
        from remote.profiles import load_profiles

        current = self.profile_combo.currentText()
        names = list(load_profiles())
        with QSignalBlocker(self.profile_combo):
            self.profile_combo.clear()
            self.profile_combo.addItems(names)
            if current in names:
                self.profile_combo.setCurrentText(current)

    # ------------------------------------------------------------------ launch guardrails

    def _start_launch_check(self) -> None:
        if self.config is None:
            return
        profile = self.profile_combo.currentText() or "local"
        worker = Worker(check_launch, self.config, profile)
        self._check_request = worker.request_id
        worker.signals.finished.connect(self._on_launch_check)
        worker.signals.failed.connect(self._on_launch_check_failed)
        self._track(worker)
        worker.start()

    def _on_launch_check(self, request_id: int, result: LaunchCheck) -> None:
        if request_id != self._check_request:
            return  # the config or the cluster changed meanwhile
        self.launch_check = result
        if not result.paragraphs:
            self.findings_label.setText(f"✓ Nothing stops a launch on {result.profile} "
                                        f"(cluster check: {result.checked})")
            self.findings_label.setStyleSheet("color: #1a7f37; padding: 2px;")
        else:
            n = len(result.paragraphs)
            items = "".join(f"<li>{html.escape(p)}</li>" for p in result.paragraphs)
            self.findings_label.setText(
                f"<b>Launch on {html.escape(result.profile)} would be refused ({n} reason{'s' if n != 1 else ''}; "
                f"cluster check: {html.escape(result.checked)})</b><ul style='margin:2px'>{items}</ul>")
            self.findings_label.setStyleSheet("color: #9a6700; padding: 2px;")
        self.findings_changed.emit(len(result.paragraphs))

    def _on_launch_check_failed(self, request_id: int, message: str) -> None:
        if request_id != self._check_request:
            return
        self.launch_check = None
        self.findings_label.setText(f"Cannot check this launch: {html.escape(message)}")
        self.findings_label.setStyleSheet(ERROR_STYLE + " padding: 2px;")
        self.findings_changed.emit(-1)

    def launch(self, force: bool = False) -> None:
        """Launch the current config on the chosen profile, in a worker; `launched(run_id)` on success. When
        the guardrails refuse it, a dialog shows why and offers to launch anyway (force)."""
        if self.config is None:
            QMessageBox.warning(self, "Launch", "The config has problems; fix them first.")
            return
        if self._launch_worker is not None or self._store_provider is None:
            return
        profile = self.profile_combo.currentText() or "local"
        store = self._store_provider()
        from remote.runs import launch

        def work(ctx: WorkContext, config: RunConfig, profile_name: str) -> str:
            return launch(config, profile_name, store, force=force)

        worker = Worker(work, self.config, profile)
        worker.signals.finished.connect(self._on_launch_finished)
        worker.signals.failed.connect(self._on_launch_failed)
        self._launch_worker = worker
        self.launch_button.setEnabled(False)
        self.launch_button.setText("Launching…")
        worker.start()

    def _launch_done(self) -> None:
        self._launch_worker = None
        self.launch_button.setText("Launch")
        self.launch_button.setEnabled(self.config is not None)

    def _on_launch_finished(self, _rid: int, run_id: str) -> None:
        self._launch_done()
        # The launched config is kept with its run (the store holds its YAML): quitting or loading another
        # config loses nothing, so it no longer counts as unsaved.
        self._mark_unmodified()
        self.launched.emit(run_id)

    def _on_launch_failed(self, _rid: int, message: str) -> None:
        self._launch_done()
        if "launch refused:" in message:
            self.confirm_force(message)
            return
        QMessageBox.critical(self, "Launch failed", message)

    def confirm_force(self, message: str) -> QMessageBox:
        """The guardrails' refusal, with "Launch anyway" (the CLI's --force) and "Cancel"."""
        reasons = message.split("launch refused:", 1)[1].split("\n\n", 1)[-1]
        box = QMessageBox(QMessageBox.Icon.Warning, "Launch refused",
                          "This run cannot work as configured:\n\n" + reasons,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("launch_refused")
        box.button(QMessageBox.StandardButton.Yes).setText("Launch anyway")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.finished.connect(lambda result: self.launch(force=True) if result == QMessageBox.StandardButton.Yes
                             else None)
        self.refusal_box = box
        box.open()
        return box


def yaml_problem(text: str) -> tuple[str | None, Any]:
    """(None, mapping) when `text` is a YAML mapping, else (what is wrong and where, None). The core parser's
    limits (size, nesting, aliases, huge integers) keep a hostile file from freezing the window."""
    try:
        data, _ = parse_yaml_text(text)
    except ConfigError as exc:
        problem = exc.problems[0]
        where = f"line {problem.line}, column {problem.column}: " if problem.line else ""
        return f"YAML does not parse ({where}{problem.message.removeprefix('not valid YAML: ')})", None
    if not isinstance(data, dict):
        return "The YAML must be a mapping of sections", None
    return None, data


def highlight_line(edit: QPlainTextEdit, line: int) -> None:
    """Move the YAML view's cursor to a 1-based line (used for problems located in a file)."""
    block = edit.document().findBlockByLineNumber(max(0, line - 1))
    cursor = QTextCursor(block)
    edit.setTextCursor(cursor)
    edit.centerCursor()


__all__ = ["ConfigPage", "FieldSpec", "SchemaForm", "field_spec", "get_path", "highlight_line", "set_path",
           "show_if_met"]
