from services.common.app import serve
from services.ressources.app import SPEC

serve(SPEC)
