"""equipement: lots and connectivity pushed by collectivités, checked and republished one
record per lot and per connectivity on `equipement.profils.v2` whenever they change."""
