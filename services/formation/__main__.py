from services.common.runtime.app import serve
from services.formation.app import SPEC

serve(SPEC)
