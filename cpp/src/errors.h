// Internal: every failure reaches the caller as one line (soat::Error), whatever library raised it.
#pragma once
#include <string>

namespace soat::detail {
inline std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }
}  // namespace soat::detail
