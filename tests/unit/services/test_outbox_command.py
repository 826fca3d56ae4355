"""`./dev outbox`'s arguments: a record's seq names it within one service's schema only."""

import pytest

from services.common.messaging import outbox_failed


@pytest.mark.parametrize(
    "argv", [["retry", "--seq", "3"], ["retry", "--seq", "3", "--service", "formation", "--service", "ressources"]]
)
def test_a_seq_without_its_one_service_is_refused_before_anything(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        outbox_failed.main(argv)
    assert refused.value.code == 2
    assert "retry --seq needs one --service" in capsys.readouterr().err
