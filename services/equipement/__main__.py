from services.common.runtime.app import serve
from services.equipement.app import SPEC

serve(SPEC)
