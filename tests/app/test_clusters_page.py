"""The Clusters page: profiles edited through a generated form, the cluster check run in a worker, the
trust-this-host dialog against a real sshd with an unknown host key, and a passphrase saved to / forgotten from
the OS keyring through the real `keyring` API (an in-memory store, and keyring's real "no backend" backend)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QDialog, QDialogButtonBox, QLineEdit, QMessageBox

from app.gui.clusters_page import ClustersPage
from tests.remote.test_profiles import MemoryKeyring


@pytest.fixture
def page(qtbot):
    page = ClustersPage()
    qtbot.addWidget(page)
    page.resize(1200, 800)
    page.show()
    return page


def _type(qtbot, page, name: str, text: str) -> None:
    edit = page.form.editors[name].edit
    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key.Key_Delete)
    qtbot.keyClicks(edit, text)


def test_local_profile_check_shows_each_probed_part(page, qtbot):
    assert [page.list.item(i).text() for i in range(page.list.count())] == ["local"]
    assert page.form.editors["backend"].combo.currentText() == "local"
    with qtbot.waitSignal(page.check_done, timeout=120_000) as blocker:
        qtbot.mouseClick(page.check_button, Qt.MouseButton.LeftButton)
    outcome = blocker.args[0]
    names = [page.results.item(r, 0).text() for r in range(page.results.rowCount())]
    assert names == [line.name for line in outcome.lines]
    assert {"python", "torch", "deepspeed"} <= set(names)
    torch_row = names.index("torch")
    assert page.results.item(torch_row, 1).text() == "✓ ok"
    assert "2.13" in page.results.item(torch_row, 2).text()
    assert outcome.profile_name in page.check_status.text()


def test_new_profile_shows_schema_messages_and_saves(page, qtbot):
    from remote.profiles import load_profiles

    page.new_profile()
    _type(qtbot, page, "name", "bad name!")
    assert not page.form.errors["name"].isHidden()
    assert "letters, digits" in page.form.errors["name"].text()
    _type(qtbot, page, "name", "gpu-cluster")
    assert page.form.errors["name"].isHidden()
    _type(qtbot, page, "port", "70000")
    assert "less than 65536" in page.form.errors["port"].text()
    _type(qtbot, page, "port", "2222")
    _type(qtbot, page, "host", "login.example.org")
    _type(qtbot, page, "partition", "gpu")
    assert page.form.validate() is not None
    qtbot.mouseClick(page.save_button, Qt.MouseButton.LeftButton)
    saved = load_profiles()["gpu-cluster"]
    assert (saved.host, saved.port, saved.partition, saved.backend) == ("login.example.org", 2222, "gpu", "slurm")
    assert "gpu-cluster" in [page.list.item(i).text() for i in range(page.list.count())]
    assert page.list.currentItem().text() == "gpu-cluster"


def test_unknown_host_key_asks_with_fingerprint_and_trusting_records_it(page, qtbot, sshd_server, tmp_path):
    from remote.profiles import ClusterProfile, save_profile

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    profile = ClusterProfile(name="sshd-test", backend="slurm", host=sshd_server.alias, ssh_config=str(sshd_server.ssh_config),
                             known_hosts=str(known_hosts), work_root=str(tmp_path / "work"), connect_timeout_s=10)
    save_profile(profile)
    page.reload(select="sshd-test")
    assert page.form.editors["known_hosts"].edit.text() == str(known_hosts)

    seen: dict[str, str] = {}

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(50, answer)
            return
        seen["text"] = box.text() + "\n" + box.informativeText()
        trust = next(b for b in box.buttons() if b.text() == "Trust this host")
        trust.click()

    QTimer.singleShot(50, answer)
    with qtbot.waitSignal(page.check_done, timeout=120_000) as blocker:
        qtbot.mouseClick(page.check_button, Qt.MouseButton.LeftButton)
    assert sshd_server.host_key_fingerprint in seen["text"]
    assert sshd_server.host_key_type in seen["text"]
    assert sshd_server.host_key_fingerprint.startswith("SHA256:")
    assert known_hosts.read_text().strip(), "the trusted key was recorded"
    connection = [line for line in blocker.args[0].lines if line.name == "connection"]
    assert not connection or connection[0].ok  # got past the host key: the probe ran


# ------------------------------------------------------------------ saved passphrase (OS keyring)

SECRET = "Qz7#vK!p9@Lw"


@pytest.fixture
def use_keyring():
    """Install a keyring backend for the test (the real `keyring` API; the OS store is swapped) and restore."""
    import keyring

    previous = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(previous)


def _remote_profile(**update):
    from remote.profiles import ClusterProfile, save_profile

    profile = ClusterProfile(name="gpu", backend="slurm", host="login.example.org", user="alice", **update)
    save_profile(profile)
    return profile


def _files_hold_no_part_of_the_secret() -> None:
    home = Path(os.environ["TUNEDECK_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files, "the profile file was written"
    parts = {SECRET[i:i + 4].encode() for i in range(len(SECRET) - 3)}
    for path in files:
        data = path.read_bytes()
        assert not [part for part in parts if part in data], path


def test_saving_a_passphrase_puts_it_only_in_the_keyring_and_sets_the_flag(page, qtbot, use_keyring, caplog):
    from remote.profiles import KEYRING_SERVICE, load_profiles, profiles_path

    caplog.set_level(logging.DEBUG)
    backend = MemoryKeyring()
    use_keyring(backend)
    _remote_profile()
    page.reload(select="local")
    assert not page.secret_button.isEnabled() and not page.forget_button.isEnabled()  # local: no SSH secret
    page.reload(select="gpu")
    assert page.secret_button.isEnabled() and not page.forget_button.isEnabled()

    seen: dict[str, object] = {}

    def answer() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QDialog) or dialog.objectName() != "secret_dialog":
            QTimer.singleShot(50, answer)
            return
        edit = dialog.findChild(QLineEdit, "secret_edit")
        seen["echo"] = edit.echoMode()
        qtbot.keyClicks(edit, SECRET)
        dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok).click()

    QTimer.singleShot(50, answer)
    with qtbot.waitSignal(page.secret_done, timeout=30_000) as blocker:
        qtbot.mouseClick(page.secret_button, Qt.MouseButton.LeftButton)
    assert seen["echo"] == QLineEdit.EchoMode.Password
    assert not [w for w in QApplication.allWidgets() if isinstance(w, QLineEdit) and SECRET in w.text()]
    assert backend.store == {(KEYRING_SERVICE, "gpu:alice@login.example.org"): SECRET}
    assert load_profiles()["gpu"].save_password_in_keyring is True
    assert "save_password_in_keyring: true" in profiles_path().read_text()
    _files_hold_no_part_of_the_secret()
    assert "keyring" in blocker.args[0] and "keyring" in page.check_status.text()
    assert page.form.editors["save_password_in_keyring"].check.isChecked()
    assert not page.form.editors["save_password_in_keyring"].isEnabled(), "only the buttons set the flag"
    assert page.forget_button.isEnabled()
    assert "gpu" in caplog.text and SECRET not in caplog.text  # logged, but never the secret


def test_cancelling_the_passphrase_dialog_saves_nothing(page, qtbot, use_keyring, monkeypatch):
    from remote.profiles import load_profiles

    backend = MemoryKeyring()
    use_keyring(backend)
    _remote_profile()
    page.reload(select="gpu")
    asked = []
    monkeypatch.setattr(page, "ask_secret", lambda profile: asked.append(profile.name))  # returns None: cancel
    qtbot.mouseClick(page.secret_button, Qt.MouseButton.LeftButton)
    assert asked == ["gpu"]
    assert backend.store == {} and load_profiles()["gpu"].save_password_in_keyring is False
    assert page.secret_button.isEnabled()


def test_forgetting_removes_the_secret_and_clears_the_flag(page, qtbot, use_keyring):
    from remote.profiles import load_profiles, set_secret

    backend = MemoryKeyring()
    use_keyring(backend)
    set_secret(_remote_profile(save_password_in_keyring=True), SECRET)
    backend.store[("tunedeck", "other:bob@elsewhere")] = "unrelated"
    page.reload(select="gpu")
    assert page.forget_button.isEnabled()
    with qtbot.waitSignal(page.secret_done, timeout=30_000):
        qtbot.mouseClick(page.forget_button, Qt.MouseButton.LeftButton)
    assert backend.store == {("tunedeck", "other:bob@elsewhere"): "unrelated"}
    assert load_profiles()["gpu"].save_password_in_keyring is False
    assert not page.form.editors["save_password_in_keyring"].check.isChecked()
    assert not page.forget_button.isEnabled() and page.secret_button.isEnabled()
    assert "removed" in page.check_status.text()


def test_without_a_keyring_backend_the_page_says_so_and_the_flag_stays_off(page, qtbot, use_keyring, monkeypatch,
                                                                          caplog):
    from keyring.backends.fail import Keyring as NoKeyring

    from remote.profiles import load_profiles

    caplog.set_level(logging.DEBUG)
    use_keyring(NoKeyring())
    _remote_profile()
    page.reload(select="gpu")
    monkeypatch.setattr(page, "ask_secret", lambda profile: (SECRET, "passphrase"))
    with qtbot.waitSignal(page.secret_done, timeout=30_000):
        qtbot.mouseClick(page.secret_button, Qt.MouseButton.LeftButton)
    status = page.check_status.text()
    assert "No usable OS keyring" in status and "nothing was saved" in status
    assert "Secret Service" in status and "ssh-agent" in status
    assert load_profiles()["gpu"].save_password_in_keyring is False
    assert not page.form.editors["save_password_in_keyring"].check.isChecked()
    assert not page.forget_button.isEnabled() and page.secret_button.isEnabled()
    _files_hold_no_part_of_the_secret()
    assert SECRET not in caplog.text


class LockedKeyring(MemoryKeyring):
    """A keyring that holds its entries but refuses to change them, as a locked collection does."""

    def delete_password(self, service, username):
        from keyring.errors import KeyringLocked

        raise KeyringLocked("the collection is locked")


def test_a_locked_keyring_keeps_the_flag_when_forgetting_fails(page, qtbot, use_keyring):
    from remote.profiles import ProfileError, delete_profile, load_profiles

    backend = LockedKeyring()
    use_keyring(backend)
    _remote_profile(save_password_in_keyring=True)
    backend.store[("tunedeck", "gpu:alice@login.example.org")] = SECRET
    page.reload(select="gpu")
    with qtbot.waitSignal(page.secret_done, timeout=30_000):
        qtbot.mouseClick(page.forget_button, Qt.MouseButton.LeftButton)
    assert "locked" in page.check_status.text()
    assert load_profiles()["gpu"].save_password_in_keyring is True, "the secret is still there: so is the flag"
    with pytest.raises(ProfileError, match=r"still in the OS keyring.*gpu:alice@login\.example\.org"):
        delete_profile("gpu")
    assert "gpu" not in load_profiles()


def test_changing_user_or_host_drops_the_secret_filed_under_the_old_ones(page, qtbot, use_keyring):
    from remote.profiles import load_profiles

    backend = MemoryKeyring()
    use_keyring(backend)
    _remote_profile(save_password_in_keyring=True)
    backend.store[("tunedeck", "gpu:alice@login.example.org")] = SECRET
    page.reload(select="gpu")
    _type(qtbot, page, "user", "bob")
    qtbot.mouseClick(page.save_button, Qt.MouseButton.LeftButton)
    saved = load_profiles()["gpu"]
    assert (saved.user, saved.save_password_in_keyring) == ("bob", False), "no flag pointing at no entry"
    qtbot.waitUntil(lambda: backend.store == {}, timeout=10_000)  # the old entry is not left behind
    assert "Save it again" in page.check_status.text()


def _choose_backend(page, backend: str) -> None:
    combo = page.form.editors["backend"].combo
    combo.setCurrentIndex(combo.findText(backend))
    combo.activated.emit(combo.currentIndex())


SSH_FIELDS = ("host", "user", "port", "identity_file", "proxy_jump", "ssh_config", "known_hosts",
              "save_password_in_keyring", "secret_kind")


def test_fields_follow_the_backend_ssh_for_remote_slurm_and_hostfile_settings_for_their_own(page, qtbot):
    from remote.profiles import load_profiles

    page.reload(select="local")
    assert not any(page.form.is_field_visible(f) for f in (*SSH_FIELDS, "partition", "hostfile_hosts"))
    assert all(page.form.is_field_visible(f) for f in ("name", "backend", "env_setup", "python", "work_root"))

    page.new_profile()
    assert all(page.form.is_field_visible(f) for f in (*SSH_FIELDS, "partition", "account"))
    assert not page.form.is_field_visible("hostfile_hosts")
    _choose_backend(page, "hostfile")
    assert page.form.is_field_visible("hostfile_hosts") and not page.form.is_field_visible("partition")
    assert page.form.is_field_visible("host")

    # a host typed for a remote backend does not block a switch to local: hidden fields are not saved
    _type(qtbot, page, "name", "was-remote")
    _type(qtbot, page, "host", "login.example.org")
    _choose_backend(page, "local")
    assert not page.form.is_field_visible("host")
    assert page.save_current() is not None
    saved = load_profiles()["was-remote"]
    assert saved.backend == "local" and saved.host is None


def test_a_new_profile_shows_no_error_until_a_field_is_edited_or_it_is_saved(page, qtbot):
    page.new_profile()
    assert all(label.isHidden() for label in page.form.errors.values()) and page.form.general_error.isHidden()
    _type(qtbot, page, "user", "me")  # an unrelated edit: still nothing about the empty host
    assert page.form.errors["host"].isHidden()
    qtbot.mouseClick(page.save_button, Qt.MouseButton.LeftButton)  # saving asks for everything
    assert not page.form.errors["host"].isHidden()
    assert "needs an SSH host" in page.form.errors["host"].text()  # under its field, not at the top
    _type(qtbot, page, "host", "login.example.org")
    assert page.form.errors["host"].isHidden()


def test_check_results_stay_with_their_profile(page, qtbot):
    page.reload(select="local")
    with qtbot.waitSignal(page.check_done, timeout=120_000):
        qtbot.mouseClick(page.check_button, Qt.MouseButton.LeftButton)
    assert page.results.rowCount() > 0 and "local" in page.check_status.text()

    page.new_profile()
    assert page.results.rowCount() == 0 and page.check_status.text() == ""  # not local's result

    page.reload(select="local")
    assert page.results.rowCount() > 0 and "local" in page.check_status.text()  # local's comes back

    # a check that ends while another profile is shown is kept for its own profile, not shown under this one
    with qtbot.waitSignal(page.check_done, timeout=120_000) as blocker:
        qtbot.mouseClick(page.check_button, Qt.MouseButton.LeftButton)
        page.new_profile()
        assert "Checking local" in page.check_status.text()
    assert blocker.args[0].profile_name == "local"
    assert page.results.rowCount() == 0 and "local:" not in page.check_status.text()


def test_the_dialog_says_whether_the_secret_is_a_passphrase_or_a_password_and_the_profile_keeps_it(
        page, qtbot, use_keyring):
    from PySide6.QtWidgets import QRadioButton

    from remote.profiles import KEYRING_SERVICE, load_profiles, profiles_path

    backend = MemoryKeyring()
    use_keyring(backend)
    _remote_profile()
    page.reload(select="gpu")
    assert not page.form.editors["secret_kind"].isEnabled(), "only the dialog says what the secret is"
    seen: dict[str, object] = {}

    def answer(choice: str) -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QDialog) or dialog.objectName() != "secret_dialog":
            QTimer.singleShot(50, lambda: answer(choice))
            return
        seen["default"] = dialog.findChild(QRadioButton, "secret_kind_passphrase").isChecked()
        dialog.findChild(QRadioButton, f"secret_kind_{choice}").click()
        qtbot.keyClicks(dialog.findChild(QLineEdit, "secret_edit"), SECRET)
        dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok).click()

    QTimer.singleShot(50, lambda: answer("password"))
    with qtbot.waitSignal(page.secret_done, timeout=30_000):
        qtbot.mouseClick(page.secret_button, Qt.MouseButton.LeftButton)
    assert seen["default"] is True, "a new secret is taken for a passphrase unless the user says otherwise"
    saved = load_profiles()["gpu"]
    assert (saved.save_password_in_keyring, saved.secret_kind) == (True, "password")
    assert "secret_kind: password" in profiles_path().read_text()
    assert backend.store == {(KEYRING_SERVICE, "gpu:alice@login.example.org"): SECRET}
    assert "password saved" in page.check_status.text()
    _files_hold_no_part_of_the_secret()

    QTimer.singleShot(50, lambda: answer("passphrase"))  # saved again, now as what it really is
    with qtbot.waitSignal(page.secret_done, timeout=30_000):
        qtbot.mouseClick(page.secret_button, Qt.MouseButton.LeftButton)
    assert load_profiles()["gpu"].secret_kind == "passphrase"
    assert "never sent" in page.check_status.text()


def test_a_password_for_a_profile_with_an_encrypted_key_is_refused_as_a_likely_passphrase(
        page, qtbot, use_keyring, monkeypatch, tmp_path):
    import paramiko

    from remote.profiles import load_profiles

    backend = MemoryKeyring()
    use_keyring(backend)
    key = tmp_path / "enc_key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(key), password="pw")
    _remote_profile(identity_file=str(key))
    page.reload(select="gpu")
    monkeypatch.setattr(page, "ask_secret", lambda profile: (SECRET, "password"))
    with qtbot.waitSignal(page.secret_done, timeout=30_000):
        qtbot.mouseClick(page.secret_button, Qt.MouseButton.LeftButton)
    assert "is encrypted" in page.check_status.text() and "nothing was saved" in page.check_status.text()
    assert backend.store == {} and load_profiles()["gpu"].save_password_in_keyring is False


def test_environment_variables_are_edited_one_per_line_and_a_bad_name_is_named(page, qtbot):
    from remote.profiles import load_profiles

    page.new_profile()
    _type(qtbot, page, "name", "with-env")
    _type(qtbot, page, "host", "login.example.org")
    env = page.form.editors["env"].edit
    env.setPlainText("HF_HOME=/data/hf cache\nNOT A NAME=1")
    assert "'NOT A NAME' is not an environment variable name" in page.form.errors["env"].text()
    env.setPlainText("HF_HOME=/data/hf cache\nNCCL_SOCKET_IFNAME=ib0,ib1")
    assert page.form.errors["env"].isHidden()
    qtbot.mouseClick(page.save_button, Qt.MouseButton.LeftButton)
    assert load_profiles()["with-env"].env == {"HF_HOME": "/data/hf cache", "NCCL_SOCKET_IFNAME": "ib0,ib1"}
