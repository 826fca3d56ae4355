from services.common.app import serve
from services.formation.app import SPEC

serve(SPEC)
