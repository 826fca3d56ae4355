from services.common.app import serve
from services.equipement.app import SPEC

serve(SPEC)
