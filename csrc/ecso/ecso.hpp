// The public header of the ECSO core: include this to embed ecso-edge in a C++ application.
// Nothing here depends on Python.
#pragma once

#include "ecso/call_options.hpp"
#include "ecso/cancel_token.hpp"
#include "ecso/config.hpp"
#include "ecso/errors.hpp"
#include "ecso/image.hpp"
#include "ecso/model.hpp"
#include "ecso/result.hpp"
#include "ecso/session.hpp"
#include "ecso/system_info.hpp"
