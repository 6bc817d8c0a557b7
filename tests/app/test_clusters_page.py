"""The Clusters page: profiles edited through a generated form, the cluster check run in a worker, and the
trust-this-host dialog against a real sshd with an unknown host key."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.gui.clusters_page import ClustersPage


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
