""""Evaluate model…": a model path on a cluster evaluated with the checkpoints' harness (a measured reference).

The dialog collects the request; the Runs page launches it (remote.runs.launch_reference, off the UI
thread) and opens the new run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


@dataclass(frozen=True)
class ModelEvaluation:
    """What to evaluate where (crosses from the dialog to the launch worker)."""

    model_path: str
    cluster: str
    label: str
    benchmarks: tuple[str, ...]  # "humaneval", "mbpp=PATH", ...
    limit: int | None
    gpus: int
    max_new_tokens: int
    batch_size: int


class EvaluateModelDialog(QDialog):
    """Model path (on the cluster), cluster, label, benchmarks and generation limits."""

    def __init__(self, clusters: list[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Evaluate a model")
        self.model_edit = QLineEdit()
        self.model_edit.setObjectName("eval_model_path")
        self.model_edit.setPlaceholderText("/models/CodeLlama-34b-hf (a directory on the cluster)")
        self.cluster_combo = QComboBox()
        self.cluster_combo.addItems(clusters)
        self.label_edit = QLineEdit()
        self.label_edit.setPlaceholderText("default: the model directory's name; e.g. Code Llama-34B")
        self.label_edit.setToolTip("A published reference of the same name is drawn beside the measured one")
        self.bench_edit = QLineEdit("humaneval")
        self.bench_edit.setToolTip("Space-separated: humaneval, mbpp=PATH, humanevalplus=PATH, mbppplus=PATH")
        self.limit_spin = QSpinBox()
        self.limit_spin.setRange(0, 100_000)
        self.limit_spin.setSpecialValueText("all tasks")
        self.gpus_spin = QSpinBox()
        self.gpus_spin.setRange(0, 64)
        self.gpus_spin.setValue(1)
        self.gpus_spin.setSpecialValueText("CPU")
        self.tokens_spin = QSpinBox()
        self.tokens_spin.setRange(1, 8192)
        self.tokens_spin.setValue(512)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 1024)
        self.batch_spin.setValue(16)
        form = QFormLayout()
        form.addRow("Model path", self.model_edit)
        form.addRow("Cluster", self.cluster_combo)
        form.addRow("Label", self.label_edit)
        form.addRow("Benchmarks", self.bench_edit)
        form.addRow("Tasks per benchmark", self.limit_spin)
        form.addRow("GPUs", self.gpus_spin)
        form.addRow("Max new tokens", self.tokens_spin)
        form.addRow("Batch size", self.batch_spin)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #d1242f;")
        self.error_label.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Evaluate")
        buttons.accepted.connect(self._on_accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Evaluated on the cluster with the same harness as checkpoints; its pass@1 appears "
                                "on the pass@1 charts as a measured reference."))
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)

    def request(self) -> ModelEvaluation | None:
        """The request as entered, or None (with the reason shown) when it is incomplete."""
        from core.evalsets import EvalSetError, parse_eval_spec

        path = self.model_edit.text().strip()
        if not path:
            self.error_label.setText("Give the model's directory on the cluster.")
            return None
        benches = tuple(self.bench_edit.text().split()) or ("humaneval",)
        try:
            for spec in benches:
                parse_eval_spec(spec)
        except EvalSetError as exc:
            self.error_label.setText(str(exc))
            return None
        label = self.label_edit.text().strip() or PurePosixPath(path.rstrip("/")).name or path
        return ModelEvaluation(path, self.cluster_combo.currentText() or "local", label, benches,
                               self.limit_spin.value() or None, self.gpus_spin.value(), self.tokens_spin.value(),
                               self.batch_spin.value())

    def _on_accept(self) -> None:
        if self.request() is not None:
            self.accept()
