"""deploy/roles.py's SQL (run against PostgreSQL: tests/integration/test_db_roles.py)."""

import re

import pytest

from deploy.roles import main, provisioning_sql


def test_each_deployment_on_a_server_names_its_own_roles(capsys):
    """Roles are the server's: staging and production on one server shared feo_formation."""
    assert main(["--operator", "feo", "--prefix", "feo_recette"]) == 0
    printed = capsys.readouterr().out
    assert 'CREATE ROLE "feo_recette_formation" LOGIN' in printed and '"feo_formation"' not in printed


def test_a_name_postgresql_would_cut_is_refused():
    """A name past 63 bytes matched nothing, silently."""
    with pytest.raises(ValueError, match="63 bytes"):
        provisioning_sql("x" * 64, {"formation": "formation"})
    with pytest.raises(ValueError, match="63 bytes"):
        provisioning_sql("feo", {"formation": "f" * 64})


@pytest.mark.parametrize("name", ["a$$b", "a$feo$b", "a$feo$$feo1$b"])
def test_a_name_holding_dollars_never_ends_the_sql_s_blocks(name):
    """PostgreSQL names may hold `$`: written inside `DO $$ … $$`, a `$$` ended the block (SQL a
    superuser runs), so such names were refused, and a restore of a schema owned by such a
    role failed. Each block is now quoted by a tag its body does not hold."""
    sql = provisioning_sql(name, {"formation": name}, prefix=name)
    blocks = re.findall(r"^DO (\$[a-z0-9]*\$) (.*) (\$[a-z0-9]*\$);$", sql, flags=re.MULTILINE)
    assert len(blocks) == 3 == sql.count("DO ")
    for opening, body, closing in blocks:
        assert opening == closing and opening not in body and name in body
