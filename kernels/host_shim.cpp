// The one translation unit that defines the host emulation's exported helpers (see host_shim.h).
#include "host_shim.h"

extern "C" const char* cda_emu_last_error() { return cda_emu::tl_error.c_str(); }
