from services.common.runtime.app import serve
from services.passerelle.app import SPEC

serve(SPEC)
