"""The référentiel's rows become Etablissement models without validation and without
pydantic's model_construct (storage/referentiel._etablissement): the models must be the ones
model_construct makes, field for field, frozen, serialised alike."""

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import Etablissement
from services.common.storage.referentiel import _FIELDS, _etablissement

rows = st.tuples(
    st.text(max_size=10),  # not validated: whatever the row holds is what the model holds
    st.text(max_size=20),
    st.sampled_from(["ecole", "college", "lycee", "erea", "autre"]),
    st.sampled_from(["public", "prive"]),
    *(st.text(max_size=5) for _ in range(4)),
    st.booleans(),
)


@given(row=rows)
def test_a_row_makes_the_model_model_construct_makes(row):
    _etablissement.cache_clear()
    ours, theirs = _etablissement(row), Etablissement.model_construct(**dict(zip(_FIELDS, row, strict=True)))
    assert ours == theirs
    assert ours.model_dump_json() == theirs.model_dump_json()
    assert ours.model_fields_set == theirs.model_fields_set
    assert (ours.model_extra, ours.__pydantic_private__) == (theirs.model_extra, theirs.__pydantic_private__)


def test_the_model_stays_frozen():
    etab = _etablissement(("0350005R", "Collège", "college", "public", "35238", "035", "14", "53", True))
    with pytest.raises(pydantic.ValidationError):
        etab.ouvert = False
