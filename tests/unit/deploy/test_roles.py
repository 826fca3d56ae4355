"""deploy/roles.py's SQL (run against PostgreSQL: tests/integration/test_db_roles.py)."""

import pytest

from deploy.roles import main, provisioning_sql


def test_each_deployment_on_a_server_names_its_own_roles(capsys):
    """Roles are the server's: staging and production on one server shared feo_formation."""
    assert main(["--operator", "feo", "--prefix", "feo_recette"]) == 0
    printed = capsys.readouterr().out
    assert 'CREATE ROLE "feo_recette_formation" LOGIN' in printed and '"feo_formation"' not in printed


@pytest.mark.parametrize("operator", ["a$$b", "x" * 64])
def test_a_name_that_would_end_the_sql_s_blocks_or_be_cut_is_refused(operator):
    """Written inside `DO $$ … $$` blocks, a `$$` ended one (SQL run as a superuser); a name past
    63 bytes matched nothing, silently."""
    with pytest.raises(ValueError, match="63 bytes"):
        provisioning_sql(operator, {"formation": "formation"})
    with pytest.raises(ValueError):
        provisioning_sql("feo", {"formation": "for$$mation"})
