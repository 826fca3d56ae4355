"""equipement: lots and connectivity pushed by collectivités, turned into one equipment
profile per UAI, published on `equipement.profils.v1` whenever it changes."""
