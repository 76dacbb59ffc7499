#include "kiln/common/error.h"

#include <cstring>

namespace kiln {

std::string errno_text(int errno_value) {
  char buffer[256];
  // GNU strerror_r returns a pointer that may or may not be the buffer.
  const char* text = strerror_r(errno_value, buffer, sizeof buffer);
  return text;
}

Error with_context(const Error& error, std::string_view context) {
  return Error(error.errno_value(), std::string(context) + ": " + error.what());
}

}  // namespace kiln
