from services.common.runtime.app import serve
from services.ressources.app import SPEC

serve(SPEC)
