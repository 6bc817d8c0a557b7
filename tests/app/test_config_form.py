"""The New run page: a form generated from the config schema, driven through its widgets."""

from __future__ import annotations

import json

import pytest
import yaml
from PySide6.QtCore import Qt

from app.gui.config_form import ConfigPage
from core.config import load_config
from core.presets import load_preset


@pytest.fixture
def page(qtbot):
    page = ConfigPage()
    qtbot.addWidget(page)
    page.resize(1300, 900)
    page.show()
    return page


def _type_into(qtbot, page, path: str, text: str) -> None:
    edit = page.form.rows[path].editor.edit
    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key.Key_Delete)
    qtbot.keyClicks(edit, text)


def _choose(page, path: str, text: str) -> None:
    combo = page.form.rows[path].editor.combo
    combo.setCurrentIndex(combo.findText(text))
    combo.activated.emit(combo.currentIndex())


def test_preset_builds_a_valid_config_shown_in_form_and_yaml(page):
    page.load_preset("codellama-7b-python")
    expected = load_preset("codellama-7b-python")
    assert page.problems == []
    assert page.config == expected
    assert yaml.safe_load(page.yaml_edit.toPlainText()) == expected.model_dump(mode="json", exclude_none=True)
    assert page.form.rows["model.name_or_path"].editor.edit.text() == expected.model.name_or_path
    assert page.form.rows["deepspeed.zero_stage"].editor.combo.currentText() == str(expected.deepspeed.zero_stage)
    assert page.banner.text().startswith("✓")
    assert page.launch_button.isEnabled()


def test_type_error_shows_schema_message_under_field_and_clears_when_fixed(page, qtbot):
    page.load_preset("tiny-demo")
    error = page.form.rows["training.learning_rate"].error
    assert error.isHidden()
    _type_into(qtbot, page, "training.learning_rate", "3e-4x")
    assert not error.isHidden()
    assert "valid number" in error.text() and "3e-4x" in error.text()
    assert page.config is None and not page.launch_button.isEnabled()
    assert "1 problem" in page.banner.text() and "training.learning_rate" in page.banner.text()
    page.banner.linkActivated.emit("training.learning_rate")  # the banner's link goes to the field
    assert page.form.rows["training.learning_rate"].editor.edit.hasFocus() or not page.isActiveWindow()
    assert page.field_value("training.learning_rate") == "3e-4x"  # UI -> model, verbatim
    _type_into(qtbot, page, "training.learning_rate", "3e-4")
    assert error.isHidden() and error.text() == ""
    assert page.config is not None and page.config.training.learning_rate == pytest.approx(3e-4)
    assert page.launch_button.isEnabled()


def test_cross_field_rule_message_appears_at_its_field(page, qtbot):
    page.load_preset("tiny-demo")
    max_steps = page.config.training.max_steps
    _type_into(qtbot, page, "training.save_steps", str(max_steps + 1))
    error = page.form.rows["training.save_steps"].error
    assert not error.isHidden()
    assert f"exceeds training.max_steps ({max_steps})" in error.text() and "check_save_within_run" in error.text()
    _type_into(qtbot, page, "training.save_steps", "20")
    assert error.isHidden()
    assert page.problems == []


def test_required_section_field_left_empty_reports_missing(page, qtbot):
    page.load_preset("tiny-demo")
    _type_into(qtbot, page, "model.architecture.hidden_size", "")
    error = page.form.rows["model.architecture.hidden_size"].error
    assert not error.isHidden() and "required" in error.text().lower()
    # unchecking the optional section removes it: the rule that random init needs a shape speaks up
    page.form.groups["model.architecture"].setChecked(False)
    assert "architecture" not in page.data["model"]
    assert "needs its shape" in page.form.group_errors["model.architecture"].text()


def test_yaml_edit_updates_the_form_and_form_edit_updates_the_yaml(page, qtbot):
    page.load_preset("tiny-demo")
    text = page.yaml_edit.toPlainText().replace("micro_batch_size: 4", "micro_batch_size: 8")
    page.yaml_edit.setPlainText(text)
    qtbot.waitUntil(lambda: page.form.rows["training.micro_batch_size"].editor.edit.text() == "8", timeout=3000)
    assert page.config is not None and page.config.training.micro_batch_size == 8

    _type_into(qtbot, page, "training.learning_rate", "0.001")
    data = yaml.safe_load(page.yaml_edit.toPlainText())
    assert data["training"]["learning_rate"] == 0.001
    assert data["training"]["micro_batch_size"] == 8

    # YAML that does not parse leaves the form as it was and says where
    page.yaml_edit.setPlainText(text.replace("training:", "training: [", 1))
    qtbot.waitUntil(lambda: "does not parse" in page.yaml_status.text(), timeout=3000)
    assert "line" in page.yaml_status.text()
    assert page.form.rows["training.learning_rate"].editor.edit.text() == "0.001"

    # a value the schema rejects, typed in YAML, shows up in the form with its message
    page.yaml_edit.setPlainText(text.replace("zero_stage: 3", "zero_stage: 5"))
    qtbot.waitUntil(lambda: not page.form.rows["deepspeed.zero_stage"].error.isHidden(), timeout=3000)
    assert page.form.rows["deepspeed.zero_stage"].editor.combo.currentText() == "5"
    assert "0, 1, 2 or 3" in page.form.rows["deepspeed.zero_stage"].error.text()


def test_zero3_knobs_show_only_for_zero3_and_sampling_knobs_only_when_sampling(page):
    page.load_preset("tiny-demo")
    zero3 = ("deepspeed.offload_param", "deepspeed.stage3_prefetch_bucket_size", "deepspeed.stage3_max_live_parameters")
    assert all(page.form.is_field_visible(p) for p in zero3)
    _choose(page, "deepspeed.zero_stage", "2")
    assert page.data["deepspeed"]["zero_stage"] == 2
    assert not any(page.form.is_field_visible(p) for p in zero3)
    assert page.form.is_field_visible("deepspeed.offload_optimizer")
    _choose(page, "deepspeed.zero_stage", "3")
    assert all(page.form.is_field_visible(p) for p in zero3)

    sampling = ("evaluation.temperature", "evaluation.top_p", "evaluation.n_samples")
    assert not any(page.form.is_field_visible(p) for p in sampling)
    _choose(page, "evaluation.decoding", "sampled")
    assert all(page.form.is_field_visible(p) for p in sampling)


def test_previews_show_ds_config_slurm_script_hostfile_and_estimate(page, qtbot):
    page.load_preset("codellama-34b-python")
    ds = page.previews["ds_config.json"]
    qtbot.waitUntil(lambda: ds.toPlainText().startswith("{"), timeout=5000)
    assert json.loads(ds.toPlainText())["zero_optimization"]["stage"] == 3
    assert "#SBATCH" in page.previews["Slurm script"].toPlainText()
    assert "slots=" in page.previews["hostfile"].toPlainText()
    estimate = page.previews["Estimate"].toPlainText()
    assert "Memory per GPU" in estimate
    nodes = page.previews["Nodes"].toPlainText()
    assert "node 1 of the allocation: ranks 0-7 -- rendezvous host (MASTER_ADDR" in nodes
    _type_into(qtbot, page, "cluster.nodes", "2")
    qtbot.waitUntil(lambda: "node02: ranks 8-15" in page.previews["Nodes"].toPlainText(), timeout=5000)
    assert "node01: ranks 0-7 -- rendezvous host" in page.previews["Nodes"].toPlainText()
    _choose(page, "deepspeed.zero_stage", "2")
    qtbot.waitUntil(lambda: json.loads(ds.toPlainText())["zero_optimization"]["stage"] == 2, timeout=5000)


def test_save_and_open_round_trip_through_yaml_files(page, qtbot, tmp_path):
    page.load_preset("phind-codellama-34b-v1")
    _type_into(qtbot, page, "name", "my phind run")
    path = tmp_path / "run.yaml"
    with qtbot.waitSignal(page.file_saved):
        page.save_file(path)
    saved = load_config(path)
    assert saved.name == "my phind run" and saved == page.config

    other = ConfigPage()
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.file_opened):
        other.open_file(path)
    assert other.config == saved
    assert other.form.rows["name"].editor.edit.text() == "my phind run"


def test_setting_a_field_from_outside_updates_form_and_yaml(page):
    page.load_preset("tiny-demo")
    page.set_field("data.contamination_report", "/tmp/report.json")
    assert page.form.rows["data.contamination_report"].editor.edit.text() == "/tmp/report.json"
    assert yaml.safe_load(page.yaml_edit.toPlainText())["data"]["contamination_report"] == "/tmp/report.json"
    assert page.config is not None and page.config.data.contamination_report == "/tmp/report.json"


def test_field_descriptions_are_tooltips(page):
    from core.config import field_help

    for path in ("training.learning_rate", "deepspeed.zero_stage", "evaluation.decoding", "model.architecture.hidden_size"):
        assert page.form.rows[path].editor.toolTip() == field_help(path)
        assert page.form.rows[path].label.toolTip() == field_help(path)


def _answer_unsaved(page, qtbot, button):
    """Answer the unsaved-changes question (a modal QMessageBox) once it is open."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QMessageBox

    asked: list[str] = []

    def answer() -> None:
        box = page.unsaved_box
        if box is None or not box.isVisible():
            QTimer.singleShot(20, answer)
            return
        asked.append(box.text() + " " + box.informativeText())
        box.button(getattr(QMessageBox.StandardButton, button)).click()

    QTimer.singleShot(0, answer)
    return asked


def _pick_preset(page, name: str) -> None:
    """What a user's choice in the preset box does: select it and emit `activated`."""
    combo = page.preset_combo
    combo.setCurrentIndex(combo.findText(name))
    combo.activated.emit(combo.currentIndex())


def test_choosing_a_preset_applies_it_at_once(page, qtbot):
    page.load_preset("tiny-demo")
    _pick_preset(page, "codellama-13b-python")
    assert page.config == load_preset("codellama-13b-python")
    assert page.form.rows["model.name_or_path"].editor.edit.text() == load_preset("codellama-13b-python").model.name_or_path
    assert not any(b.text() == "Use preset" for b in page.findChildren(type(page.launch_button)))


def test_choosing_a_preset_over_unsaved_edits_asks_and_cancel_keeps_them(page, qtbot):
    page.load_preset("tiny-demo")
    _type_into(qtbot, page, "name", "my edited run")
    assert page.is_modified()
    asked = _answer_unsaved(page, qtbot, "Cancel")
    _pick_preset(page, "codellama-7b-base")
    assert asked and "not saved" in asked[0] and "load the preset codellama-7b-base" in asked[0]
    assert page.data["name"] == "my edited run"  # kept
    assert page.preset_combo.currentText() == "tiny-demo"  # the box shows what the form holds

    _answer_unsaved(page, qtbot, "Discard")
    _pick_preset(page, "codellama-7b-base")
    assert page.config == load_preset("codellama-7b-base") and not page.is_modified()


def test_save_in_the_unsaved_question_writes_the_file_before_the_preset_replaces_it(page, qtbot, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(load_preset("tiny-demo").to_yaml())
    page.open_file(path)
    _type_into(qtbot, page, "name", "saved first")
    _answer_unsaved(page, qtbot, "Save")
    _pick_preset(page, "codellama-7b-base")
    assert load_config(path).name == "saved first"
    assert page.config == load_preset("codellama-7b-base")


def test_opening_a_file_shows_its_preset_and_asks_about_unsaved_edits(page, qtbot, tmp_path):
    page.load_preset("tiny-demo")
    custom = load_preset("codellama-7b-python").model_dump(mode="json", exclude_none=True)
    custom.pop("preset", None)
    no_preset = tmp_path / "custom.yaml"
    no_preset.write_text(yaml.safe_dump(custom))
    from_preset = tmp_path / "phind.yaml"
    from_preset.write_text(load_preset("phind-codellama-34b-v1").to_yaml())

    assert page.open_file(from_preset)
    assert page.preset_combo.currentText() == "phind-codellama-34b-v1"
    assert page.open_file(no_preset)
    assert page.preset_combo.currentIndex() == -1 and page.preset_combo.currentText() == ""  # not tiny-demo any more

    _type_into(qtbot, page, "name", "edited")
    asked = _answer_unsaved(page, qtbot, "Cancel")
    assert not page.open_file(from_preset)
    assert asked and "open phind.yaml" in asked[0] and "to custom.yaml" in asked[0]
    assert page.data["name"] == "edited" and page.path == no_preset


def test_a_file_that_does_not_parse_clears_the_previous_form_and_its_problems(page, qtbot, tmp_path):
    page.load_preset("tiny-demo")
    bad_config = tmp_path / "invalid.yaml"
    bad_config.write_text(load_preset("tiny-demo").to_yaml().replace("max_steps: ", "max_steps: -"))
    page.open_file(bad_config)
    assert page.problems and "problem" in page.banner.text()  # a config with problems: its header shows

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: [unclosed\n")
    page.open_file(broken)
    assert page.config is None and page.data == {}
    assert not page.form.isEnabled() and not page.launch_button.isEnabled()
    assert page.form.rows["name"].editor.edit.text() != load_preset("tiny-demo").name  # nothing of before
    assert all(not row.error.text() for row in page.form.rows.values())  # no messages of the previous file
    assert "broken.yaml is not a run config" in page.banner.text() and "line 3" in page.banner.text()
    assert "problem" not in page.banner.text()
    assert page.preset_combo.currentIndex() == -1
    assert "does not parse" in page.yaml_status.text()
    assert not page.is_modified()

    # fixing the YAML brings the form back
    page.yaml_edit.setPlainText(load_preset("tiny-demo").to_yaml())
    assert page.apply_yaml() and page.form.isEnabled() and page.config == load_preset("tiny-demo")


def test_evaluation_preview_says_where_each_backend_evaluates_and_why(page, qtbot):
    page.load_preset("phind-codellama-34b-v1")
    view = page.previews["Evaluation"]
    qtbot.waitUntil(lambda: "evaluation placement on slurm" in view.toPlainText(), timeout=10_000)
    text = view.toPlainText()
    assert "evaluation placement on slurm: slurm (auto)" in text and "own Slurm job on 2 GPUs" in text
    assert "evaluation placement on hostfile: after_training (auto)" in text
    assert "KV cache" in text and "#SBATCH --gpus-per-node=2" in text  # the evaluation job script
    assert "evaluation.placement" in page.form.rows and "evaluation.gpus" in page.form.rows  # in the form


def test_the_page_shows_the_launch_guardrails_findings_before_launch_is_pressed(qtbot, tmp_path):
    import sys

    from core.store import Store
    from remote.profiles import ClusterProfile, save_profile

    save_profile(ClusterProfile(name="cpu-only", backend="local", python=sys.executable, nodes=1, gpus_per_node=2))
    store = Store(tmp_path / "store.sqlite3")
    page = ConfigPage(store_provider=lambda: store)
    qtbot.addWidget(page)
    page.show()
    try:
        page.refresh_profiles()
        page.load_preset("tiny-demo")
        page.profile_combo.setCurrentText("cpu-only")
        qtbot.waitUntil(lambda: page.launch_check is not None and page.launch_check.profile == "cpu-only", timeout=60_000)
        assert page.launch_check.paragraphs == () and "Nothing stops a launch on cpu-only" in page.findings_label.text()
        with qtbot.waitSignal(page.findings_changed, timeout=60_000) as changed:
            page.load_preset("phind-codellama-34b-v1")
        assert changed.args[0] == 3
        text = page.findings_label.text()
        assert "would be refused (3 reasons" in text
        assert "No training data" in text and "No GPU where this config needs GPUs" in text
        assert "does not fit in GPU memory" in text
        # Launch anyway: the same findings, with the choice the CLI's --force gives
        page.launch()
        qtbot.waitUntil(lambda: page.refusal_box is not None and page.refusal_box.isVisible(), timeout=60_000)
        assert "No training data" in page.refusal_box.text()
        assert page.refusal_box.button(page.refusal_box.StandardButton.Yes).text() == "Launch anyway"
        page.refusal_box.reject()
        assert store.list_runs() == []
    finally:
        store.close()
