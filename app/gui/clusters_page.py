"""The Clusters page: list and edit cluster profiles (a form generated from remote.profiles.ClusterProfile),
run the cluster check in a worker, ask before trusting an unknown SSH host key, and save or forget a key
passphrase / password in the OS keyring (never in a file)."""

from __future__ import annotations

import copy
import html
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticUndefined
from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.config_form import (
    ERROR_STYLE,
    FieldEditor,
    FieldSpec,
    get_path,
    make_editor,
    model_specs,
    set_path,
    show_if_met,
)
from app.gui.theme import palette_is_dark
from app.gui.workers import WorkContext, Worker

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- thread crossing


@dataclass(frozen=True)
class HostKeyPrompt:
    """The check stopped at an unknown host key: what the trust dialog shows."""

    profile_name: str
    host: str
    key_type: str
    fingerprint: str
    key: Any  # the UnknownHostKeyError (it carries the offered key) for trust_host_key


@dataclass(frozen=True)
class CheckLine:
    name: str
    ok: bool | None  # None: skipped / informational
    detail: str


@dataclass(frozen=True)
class CheckOutcome:
    profile_name: str
    lines: tuple[CheckLine, ...]
    ok: bool
    summary: str


def _check_lines(report: Any) -> tuple[CheckLine, ...]:
    """remote.check's CheckItems as table lines: a failed optional item is a warning (ok=None)."""
    lines = []
    for item in report.items:
        ok = True if item.ok else (False if item.required else None)
        detail = item.value + (f"\nfix: {item.fix}" if not item.ok and item.fix else "")
        lines.append(CheckLine(item.name, ok, detail))
    return tuple(lines)


def run_cluster_check(ctx: WorkContext, profile: Any) -> CheckOutcome | HostKeyPrompt:
    """Worker body: an unknown host key comes back as a prompt (asked before anything runs there), then
    remote.check.check_cluster."""
    from remote.check import check_cluster
    from remote.profiles import fetch_host_key

    if not profile.is_local:
        unknown = fetch_host_key(profile)
        if unknown is not None:
            return HostKeyPrompt(profile.name, unknown.host, unknown.key_type, unknown.fingerprint_sha256, unknown)
    report = check_cluster(profile)
    from remote.check import save_report

    try:
        save_report(report)  # what launches and the config page judge against (remote.preflight)
    except OSError as exc:
        log.warning("cannot keep the check of %s: %s", profile.name, exc)
    lines = _check_lines(report)
    if report.ok:
        summary = "all required parts present" + (f" ({len(report.warnings)} warnings)" if report.warnings else "")
    else:
        summary = f"missing: {', '.join(i.name for i in report.missing)}"
        if report.install_command:
            summary += f" — install with: {report.install_command}"
    return CheckOutcome(profile.name, lines, report.ok, summary)


def trust_and_check(ctx: WorkContext, profile: Any, key: Any) -> CheckOutcome | HostKeyPrompt:
    """Record the key the user accepted, then check again."""
    from remote.profiles import trust_host_key

    trust_host_key(profile, key)
    return run_cluster_check(ctx, profile)


def store_secret(ctx: WorkContext, profile: Any, secret: str) -> str | None:
    """Worker body (a DBus keyring can block): save the secret in the OS keyring. Returns None when saved,
    else why not, for the user; the keyring's own failure is turned into that message here so that no
    traceback is logged from this call."""
    from keyring.errors import KeyringError, NoKeyringError

    from remote.profiles import set_secret
    from remote.ssh import key_file_is_encrypted

    if profile.secret_kind == "password" and profile.identity_file and key_file_is_encrypted(profile.identity_file):
        return (f"{profile.identity_file} is encrypted, so it needs its passphrase: save that as “Passphrase of my "
                "SSH key” (it unlocks the key here and is never sent). A login password is sent to the cluster; "
                "nothing was saved.")
    try:
        set_secret(profile, secret)
    except NoKeyringError:
        return ("No usable OS keyring on this machine, so nothing was saved. Install and unlock a Secret Service "
                "(GNOME Keyring or KWallet) and try again, or load the key into ssh-agent (`ssh-add KEY`) instead.")
    except KeyringError as exc:  # e.g. a locked collection, or the user dismissed the unlock prompt
        return (f"The OS keyring refused the passphrase ({type(exc).__name__}: {exc}); nothing was saved. Unlock "
                "your keyring and try again, or load the key into ssh-agent (`ssh-add KEY`) instead.")
    log.info("saved the %s of cluster profile %s in the OS keyring", profile.secret_kind, profile.name)
    return None


def forget_secrets(ctx: WorkContext, profiles: list[Any]) -> None:
    """Worker body: delete the keyring entries of these profiles (missing entries are fine)."""
    from remote.profiles import delete_secret

    for profile in profiles:
        delete_secret(profile)
    log.info("forgot the saved passphrase of cluster profile(s) %s", ", ".join(sorted({p.name for p in profiles})))


# ------------------------------------------------------------------------------------------ widgets


def secret_dialog(parent: QWidget, profile: Any) -> tuple[str, str] | None:
    """Ask for the key passphrase or the SSH login password of a profile, and which of the two it is;
    (secret, "passphrase" | "password"), or None when cancelled. The typed text is cleared from the widget
    before the dialog goes."""
    dialog = QDialog(parent)
    dialog.setObjectName("secret_dialog")
    dialog.setWindowTitle("Save password / passphrase")
    layout = QVBoxLayout(dialog)
    text = QLabel(
        f"The secret TuneDeck should use for profile <b>{html.escape(profile.name)}</b> "
        f"({html.escape(profile.describe())}).<br><br>It is stored in your operating system's keyring (Secret Service, "
        "macOS Keychain or Windows Credential Manager), never in a file, and TuneDeck reads it when it connects."
    )
    text.setWordWrap(True)
    text.setTextFormat(Qt.TextFormat.RichText)
    layout.addWidget(text)
    # What the secret is decides where it may go: a passphrase must never reach a server.
    as_passphrase = QRadioButton("Passphrase of my SSH key — unlocks the key on this computer, never sent anywhere")
    as_passphrase.setObjectName("secret_kind_passphrase")
    as_password = QRadioButton("SSH login password — sent to the cluster (after its host key is verified) when no "
                               "key logs in")
    as_password.setObjectName("secret_kind_password")
    kind = profile.secret_kind if profile.save_password_in_keyring else "passphrase"
    (as_password if kind == "password" else as_passphrase).setChecked(True)
    layout.addWidget(as_passphrase)
    layout.addWidget(as_password)
    edit = QLineEdit()
    edit.setObjectName("secret_edit")
    edit.setEchoMode(QLineEdit.EchoMode.Password)
    layout.addWidget(edit)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout.addWidget(buttons)
    edit.setFocus()
    try:
        accepted = dialog.exec() == QDialog.DialogCode.Accepted
        secret = edit.text()
        kind = "password" if as_password.isChecked() else "passphrase"
    finally:
        edit.clear()
        dialog.deleteLater()
    return (secret, kind) if accepted and secret else None


def host_key_dialog(parent: QWidget, prompt: HostKeyPrompt) -> bool:
    """Ask whether to trust an unknown host key; True when the user trusts it."""
    box = QMessageBox(parent)
    box.setWindowTitle("Unknown host key")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setText(f"<b>The authenticity of host {prompt.host} cannot be established.</b>")
    box.setInformativeText(
        f"Profile <b>{prompt.profile_name}</b><br>{prompt.key_type} key fingerprint:<br>"
        f"<code style='font-size: 11pt'>{prompt.fingerprint}</code><br><br>"
        "Compare it with the fingerprint your cluster admins publish. Trusting records the key in your "
        "known_hosts file; a later change of key is refused."
    )
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    trust = box.addButton("Trust this host", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.setObjectName("host_key_dialog")
    box.exec()
    return box.clickedButton() is trust


class ModelForm(QWidget):
    """A form generated from a flat pydantic model (ClusterProfile), with messages under the fields.

    Fields whose `show_if` hints do not hold (SSH settings of a local profile, Slurm's of a hostfile one) are
    hidden and left out of what is validated and saved. A message shows under a field once it was edited, or
    for every field after `validate(show_all=True)` (Save, Check) or when a saved profile is loaded: a new,
    untouched form does not greet the user with errors."""

    edited = Signal()

    def __init__(self, model: type, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = model
        self.specs: list[FieldSpec] = [s for s in model_specs(model, "") if s.kind != "section"]
        self.editors: dict[str, FieldEditor] = {}
        self.errors: dict[str, QLabel] = {}
        self.boxes: dict[str, QWidget] = {}
        self.data: dict[str, Any] = {}
        self.touched: set[str] = set()
        self.show_all = False
        self.layout_form = form = QFormLayout(self)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setVerticalSpacing(6)
        self.general_error = QLabel()
        self.general_error.setStyleSheet(ERROR_STYLE)
        self.general_error.setWordWrap(True)
        self.general_error.hide()
        form.addRow(self.general_error)
        for spec in self.specs:
            editor = make_editor(spec)
            error = QLabel()
            error.setObjectName(f"error:{spec.path}")
            error.setStyleSheet(ERROR_STYLE)
            error.setWordWrap(True)
            error.hide()
            box = QWidget()
            bl = QVBoxLayout(box)
            bl.setContentsMargins(0, 0, 0, 0)
            bl.setSpacing(2)
            bl.addWidget(editor)
            bl.addWidget(error)
            label = QLabel(spec.name.replace("_", " "))
            label.setToolTip(spec.description)
            form.addRow(label, box)
            editor.edited.connect(lambda s=spec, e=editor: self._on_edited(s.path, e.value()))
            self.editors[spec.path] = editor
            self.errors[spec.path] = error
            self.boxes[spec.path] = box

    def load(self, data: dict[str, Any], *, show_all: bool = True) -> None:
        """Show `data`; `show_all=False` for a new profile (messages wait until a field is edited)."""
        self.data = copy.deepcopy(data)
        self.touched = set()
        self.show_all = show_all
        for spec in self.specs:
            value = get_path(self.data, spec.path, PydanticUndefined)
            if value is PydanticUndefined:
                value = spec.default
            with QSignalBlocker(self.editors[spec.path]):
                self.editors[spec.path].set_value(value)
        self.validate()

    def _value_of(self, path: str) -> Any:
        value = get_path(self.data, path, PydanticUndefined)
        if value is PydanticUndefined:
            spec = next((s for s in self.specs if s.path == path), None)
            return spec.default if spec is not None else None
        return value

    def applies(self, path: str) -> bool:
        """Whether a field applies to the profile as it stands (its show_if hints hold)."""
        spec = next(s for s in self.specs if s.path == path)
        return show_if_met(spec, self._value_of)

    def is_field_visible(self, path: str) -> bool:
        return not self.boxes[path].isHidden()

    def _update_visibility(self) -> None:
        for spec in self.specs:
            if spec.show_if:
                self.layout_form.setRowVisible(self.boxes[spec.path], self.applies(spec.path))

    def _on_edited(self, path: str, value: Any) -> None:
        set_path(self.data, path, value)
        self.touched.add(path)
        self.validate()
        self.edited.emit()

    def payload(self) -> dict[str, Any]:
        """The data to validate and save: fields that do not apply to the chosen backend are left out."""
        return {k: v for k, v in self.data.items()
                if not any(s.path == k for s in self.specs) or self.applies(k)}

    def validate(self, show_all: bool = False) -> Any | None:
        """The validated model, or None with the messages shown under their fields (under the fields edited so
        far, or all of them once `show_all` was asked for)."""
        self.show_all = self.show_all or show_all
        self._update_visibility()
        for label in (*self.errors.values(), self.general_error):
            label.clear()
            label.hide()
        try:
            return self.model.model_validate(self.payload())
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                key, message = self._place(err)
                if not (self.show_all or key in self.touched):
                    continue
                label = self.errors.get(key, self.general_error)
                label.setText((label.text() + "\n" if label.text() else "") + message)
                label.show()
            return None

    def _place(self, err: Any) -> tuple[str, str]:
        """(field, message): a model-level message that starts with a field's name goes under that field."""
        msg = str(err["msg"])
        if err["loc"]:
            return str(err["loc"][0]), msg
        text = msg.removeprefix("Value error, ")
        head, sep, rest = text.partition(": ")
        if sep and head in self.errors:
            return head, rest
        return "", msg


class ClustersPage(QWidget):
    """Cluster profiles: list, edit, save, delete, check."""

    profiles_changed = Signal()
    check_done = Signal(object)  # CheckOutcome
    secret_done = Signal(str)  # the status message after saving / forgetting a passphrase

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.profiles: dict[str, Any] = {}
        self._worker: Worker | None = None
        self._checking: str | None = None  # the profile the running check is for
        self._secret_worker: Worker | None = None
        self._current: str | None = None
        self._outcomes: dict[str, CheckOutcome] = {}  # the last check of each profile, shown under it only

        self.list = QListWidget()
        self.list.setObjectName("profiles_list")
        self.list.currentTextChanged.connect(self._on_profile_selected)
        new = QPushButton("New profile")
        new.clicked.connect(self.new_profile)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._on_delete_clicked)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("Profiles"))
        ll.addWidget(self.list, 1)
        lb = QHBoxLayout()
        lb.addWidget(new)
        lb.addWidget(self.delete_button)
        ll.addLayout(lb)

        self.form: ModelForm | None = None
        self.form_box = QGroupBox("Profile")
        self.form_layout = QVBoxLayout(self.form_box)
        self.save_button = QPushButton("Save profile")
        self.save_button.setObjectName("save_profile_button")
        self.save_button.clicked.connect(self.save_current)
        self.secret_button = QPushButton("Save password / passphrase…")
        self.secret_button.setObjectName("save_secret_button")
        self.secret_button.setToolTip("Save the SSH key passphrase or password in the OS keyring (never in a file)")
        self.secret_button.clicked.connect(self.save_secret)
        self.forget_button = QPushButton("Forget saved password")
        self.forget_button.setObjectName("forget_secret_button")
        self.forget_button.setToolTip("Delete the saved passphrase / password from the OS keyring")
        self.forget_button.clicked.connect(self.forget_secret)
        self.check_button = QPushButton("Run cluster check")
        self.check_button.setObjectName("check_button")
        self.check_button.setToolTip("Connect, check the scheduler, Python, the training stack, GPUs and the work root")
        self.check_button.clicked.connect(self.start_check)
        self.check_status = QLabel()
        self.check_status.setObjectName("check_status")
        self.check_status.setWordWrap(True)
        self.results = QTableWidget(0, 3)
        self.results.setObjectName("check_results")
        self.results.setHorizontalHeaderLabels(["Check", "Result", "Detail"])
        self.results.verticalHeader().hide()
        self.results.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.results.setWordWrap(True)
        self.results.setAlternatingRowColors(True)
        header = self.results.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form_box)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(scroll, 3)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.secret_button)
        buttons.addWidget(self.forget_button)
        buttons.addStretch(1)
        buttons.addWidget(self.check_button)
        rl.addLayout(buttons)
        rl.addWidget(self.check_status)
        rl.addWidget(self.results, 2)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("clusters_splitter")
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 4)
        splitter.setSizes([240, 900])
        self.splitter = splitter
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 6)
        layout.addWidget(splitter)
        self.reload()

    # ------------------------------------------------------------------ profiles

    def reload(self, select: str | None = None) -> None:
        from remote.profiles import ClusterProfile, load_profiles

        if self.form is None:
            self.form = ModelForm(ClusterProfile)
            self.form.edited.connect(self._update_secret_buttons)
            # The flag follows the keyring: only the Save / Forget buttons set it, so that it never claims a
            # secret that is not there, nor leaves one behind when unticked.
            flag = self.form.editors["save_password_in_keyring"]
            flag.setEnabled(False)
            flag.setToolTip("Set by “Save password / passphrase…” and cleared by “Forget saved password”.")
            # Likewise what the secret is: turning a saved passphrase into a "password" here would send it out.
            kind = self.form.editors["secret_kind"]
            kind.setEnabled(False)
            kind.setToolTip("Chosen in “Save password / passphrase…”, with the secret itself.")
            self.form_layout.addWidget(self.form)
        self.profiles = load_profiles()
        current = select or self._current or next(iter(self.profiles), None)
        with QSignalBlocker(self.list):
            self.list.clear()
            self.list.addItems(list(self.profiles))
        items = self.list.findItems(current or "", Qt.MatchFlag.MatchExactly)
        if items:
            self.list.setCurrentItem(items[0])
        self._on_profile_selected(current or "")

    def _on_profile_selected(self, name: str) -> None:
        if not name or name not in self.profiles or self.form is None:
            return
        self._current = name
        self.form_box.setTitle(f"Profile — {name}")
        self.form.load(self.profiles[name].model_dump(mode="json", exclude_none=True))
        self.delete_button.setEnabled(name != "local")
        self._show_check_of(name)
        self._update_secret_buttons()

    def _show_check_of(self, name: str | None) -> None:
        """The check results area shows this profile's last check, or nothing (never another profile's)."""
        self.results.setRowCount(0)
        self.check_status.clear()
        self.check_status.setStyleSheet("")
        outcome = self._outcomes.get(name or "")
        if outcome is not None:
            self.show_outcome(outcome, emit=False)
        elif self._worker is not None and self._checking is not None and self._checking != name:
            self.check_status.setText(f"Checking {self._checking}… (its results show under that profile)")

    def new_profile(self) -> None:
        assert self.form is not None
        name = "cluster"
        n = 1
        while name in self.profiles:
            n += 1
            name = f"cluster{n}"
        self._current = None
        self.list.clearSelection()
        self.form_box.setTitle("Profile — new")
        self.form.load({"name": name, "backend": "slurm", "host": ""}, show_all=False)
        self.delete_button.setEnabled(False)
        self._show_check_of(None)
        self._update_secret_buttons()

    def save_current(self) -> Any | None:
        from remote.profiles import save_profile

        assert self.form is not None
        profile = self.form.validate(show_all=True)
        if profile is None:
            return None
        saved = self.profiles.get(self._current or "")
        moved = (saved is not None and saved.save_password_in_keyring and not saved.is_local
                 and saved.keyring_username() != profile.keyring_username())
        if moved:
            # The saved secret is filed under the old name:user@host. Rather than a flag that points at nothing,
            # drop the old entry (off the UI thread) and ask for the secret again.
            profile = profile.model_copy(update={"save_password_in_keyring": False})
            self._move_worker = Worker(forget_secrets, [saved])
            self._move_worker.signals.failed.connect(self._on_secret_failed)
            self._move_worker.start()
        save_profile(profile)
        self.reload(select=profile.name)
        self.profiles_changed.emit()
        if moved:
            self.check_status.setStyleSheet(ERROR_STYLE)
            self.check_status.setText(f"{profile.name}: the saved passphrase belonged to {saved.describe()}; it was "
                                      "removed from the OS keyring. Save it again for the new settings.")
        return profile

    def _on_delete_clicked(self) -> None:
        from remote.profiles import delete_profile

        name = self._current
        if not name or name == "local":
            return
        if QMessageBox.question(self, "Delete profile", f"Delete the cluster profile {name!r}?") != QMessageBox.StandardButton.Yes:
            return
        from remote.profiles import ProfileError

        try:
            delete_profile(name)
        except ProfileError as exc:  # removed, but the keyring kept its secret: say where it is
            QMessageBox.warning(self, "Delete profile", str(exc))
        self._current = None
        self.reload()
        self.profiles_changed.emit()

    # ------------------------------------------------------------------ saved passphrase (OS keyring)

    def _update_secret_buttons(self) -> None:
        data = self.form.data if self.form is not None else {}
        remote = data.get("backend", "local") != "local"
        idle = self._secret_worker is None
        self.secret_button.setEnabled(remote and idle)
        self.forget_button.setEnabled(remote and idle and bool(data.get("save_password_in_keyring")))
        # While a keyring call runs (an unlock prompt can take a while) the profile it will save is fixed:
        # no edits or saves in between, which its save would overwrite.
        self.save_button.setEnabled(idle)
        if self.form is not None:
            self.form.setEnabled(idle)

    def ask_secret(self, profile: Any) -> tuple[str, str] | None:
        """The secret dialog (a method so that tests can answer it): (secret, kind), None when cancelled."""
        return secret_dialog(self, profile)

    def save_secret(self) -> None:
        """Ask for the passphrase, store it in the OS keyring off the UI thread, then save the profile with
        save_password_in_keyring set (only once the keyring took it)."""
        assert self.form is not None
        profile = self.form.validate(show_all=True)
        if profile is None or profile.is_local or self._secret_worker is not None:
            return
        answer = self.ask_secret(profile)
        if not answer:
            return
        secret, kind = answer
        profile = profile.model_copy(update={"secret_kind": kind})
        worker = Worker(store_secret, profile, secret)
        del secret, answer
        worker.signals.finished.connect(lambda _rid, error: self._on_secret_stored(profile, error))
        worker.signals.failed.connect(self._on_secret_failed)
        self._start_secret(worker, "Saving the passphrase in the OS keyring…")

    def forget_secret(self) -> None:
        """Delete the saved passphrase from the keyring, clear the flag and save the profile."""
        assert self.form is not None
        profile = self.form.validate(show_all=True)
        if profile is None or profile.is_local or self._secret_worker is not None:
            return
        # the entry under the saved settings too, in case user/host/name were edited since
        saved = self.profiles.get(self._current or "")
        targets = [p for p in (saved, profile) if p is not None and not p.is_local]
        worker = Worker(forget_secrets, targets)
        worker.signals.finished.connect(lambda _rid, _result: self._on_secret_forgotten(profile))
        worker.signals.failed.connect(self._on_secret_failed)
        self._start_secret(worker, "Removing the saved passphrase from the OS keyring…")

    def _start_secret(self, worker: Worker, message: str) -> None:
        self._secret_worker = worker
        self._update_secret_buttons()
        self.check_status.setStyleSheet("")
        self.check_status.setText(message)
        worker.start()

    def _end_secret(self, ok: bool, message: str) -> None:
        self._secret_worker = None
        self._update_secret_buttons()
        self.check_status.setStyleSheet("color: #1a7f37;" if ok else ERROR_STYLE)
        self.check_status.setText(message)
        self.secret_done.emit(message)

    def _on_secret_stored(self, profile: Any, error: str | None) -> None:
        if error is not None:
            self._end_secret(False, error)
            return
        profile = profile.model_copy(update={"save_password_in_keyring": True})
        if self._save_flag(profile):
            use = ("to unlock the key (never sent)" if profile.secret_kind == "passphrase"
                   else "to log in when no key does")
            self._end_secret(True, f"{profile.name}: {profile.secret_kind} saved in the OS keyring; TuneDeck uses it "
                                   f"{use}.")

    def _save_flag(self, profile: Any) -> bool:
        """Save the profile with its new keyring flag; a file that cannot be written is shown, not raised."""
        from remote.profiles import ProfileError, save_profile

        try:
            save_profile(profile)
        except (ProfileError, OSError) as exc:
            self._end_secret(False, f"{profile.name}: cannot save the profile: {exc}")
            return False
        self.reload(select=profile.name)
        self.profiles_changed.emit()
        return True

    def _on_secret_forgotten(self, profile: Any) -> None:
        profile = profile.model_copy(update={"save_password_in_keyring": False})
        if self._save_flag(profile):
            self._end_secret(True, f"{profile.name}: saved passphrase removed from the OS keyring.")

    def _on_secret_failed(self, _rid: int, message: str) -> None:
        self._end_secret(False, f"Keyring: {message}")

    # ------------------------------------------------------------------ check

    def start_check(self) -> None:
        assert self.form is not None
        profile = self.form.validate(show_all=True)
        if profile is None or self._worker is not None:
            return
        self._start(Worker(run_cluster_check, profile))

    def _start(self, worker: Worker) -> None:
        worker.signals.finished.connect(self._on_check_finished)
        worker.signals.failed.connect(self._on_check_failed)
        self._worker = worker
        self._checking = self.form.data.get("name") if self.form is not None else None
        self._outcomes.pop(self._checking or "", None)
        self.check_button.setEnabled(False)
        self.check_status.setStyleSheet("")
        self.check_status.setText("Checking…")
        self.results.setRowCount(0)
        worker.start()

    def _shown_profile(self) -> str | None:
        """The profile the form shows: the selected saved one, or the name typed into a new one."""
        return self._current or (self.form.data.get("name") if self.form is not None else None)

    def _on_check_failed(self, _rid: int, message: str) -> None:
        self._worker = None
        checked, self._checking = self._checking, None
        self.check_button.setEnabled(True)
        if checked != self._shown_profile():
            self.check_status.clear()
            return  # another profile is shown now: its area is not this check's
        self.check_status.setStyleSheet(ERROR_STYLE)
        self.check_status.setText(f"Check failed: {message}")

    def _on_check_finished(self, _rid: int, result: CheckOutcome | HostKeyPrompt) -> None:
        self._worker = None
        self._checking = None
        self.check_button.setEnabled(True)
        if isinstance(result, HostKeyPrompt):
            self.check_status.setText(f"Unknown host key for {result.host}: {result.key_type} {result.fingerprint}")
            if self.ask_trust(result):
                profile = self.form.validate() if self.form else None
                if profile is not None and profile.name == result.profile_name:
                    self._start(Worker(trust_and_check, profile, result.key))
            return
        self.show_outcome(result)

    def ask_trust(self, prompt: HostKeyPrompt) -> bool:
        """The trust-this-host dialog (a method so that tests can answer it)."""
        return host_key_dialog(self, prompt)

    def show_outcome(self, outcome: CheckOutcome, emit: bool = True) -> None:
        """Keep a check's outcome for its profile and show it when that profile is the one shown."""
        self._outcomes[outcome.profile_name] = outcome
        if outcome.profile_name == self._shown_profile():
            self._render_outcome(outcome)
        if emit:
            self.check_done.emit(outcome)

    def _render_outcome(self, outcome: CheckOutcome) -> None:
        dark = palette_is_dark()
        self.results.setRowCount(len(outcome.lines))
        for row, line in enumerate(outcome.lines):
            mark = {True: "✓ ok", False: "✗ failed", None: "– skipped"}[line.ok]
            color = {True: ("#1a7f37", "#4ade80"), False: ("#cf222e", "#f87171"), None: ("#57606a", "#a1a1aa")}[line.ok]
            name_item = QTableWidgetItem(line.name)
            result_item = QTableWidgetItem(mark)
            result_item.setForeground(QColor(color[1 if dark else 0]))
            detail_item = QTableWidgetItem(line.detail)
            detail_item.setToolTip(line.detail)
            for col, item in enumerate((name_item, result_item, detail_item)):
                self.results.setItem(row, col, item)
        self.results.resizeRowsToContents()
        self.check_status.setStyleSheet("color: #1a7f37;" if outcome.ok else ERROR_STYLE)
        self.check_status.setText(f"{outcome.profile_name}: {outcome.summary}")
