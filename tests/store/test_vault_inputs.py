"""Input images in the vault: removed only when no generation names them, even when an
admission names one while it is being removed."""

from __future__ import annotations

from pathlib import Path

from server.store.vault import Vault


def test_an_input_named_while_it_is_being_removed_is_put_back(tmp_path: Path) -> None:
    vault = Vault(tmp_path, b"k" * 32)
    shared, _ = vault.save_input(b"shared png")
    alone, _ = vault.save_input(b"lonely png")

    def named(names: list[str]) -> set[str]:
        # Asked once the files are gone: an admission committed `shared` meanwhile.
        assert not vault.path(shared).exists() and not vault.path(alone).exists()
        return {shared} & set(names)

    assert vault.remove_inputs([shared, alone, "inputs/00/gone.png"], named) == [alone]
    assert vault.path(shared).read_bytes() == b"shared png"
    assert not vault.path(alone).exists()


def test_an_admission_committed_after_the_removal_writes_its_input_again(
    tmp_path: Path,
) -> None:
    vault = Vault(tmp_path, b"k" * 32)
    name, digest = vault.save_input(b"png")  # the admission finds the file...
    assert vault.remove_inputs([name], lambda names: set()) == [name]  # ...a delete takes it
    vault.write_inputs({name: b"png"})  # the admission, once committed
    assert vault.path(name).read_bytes() == b"png" and digest in name
