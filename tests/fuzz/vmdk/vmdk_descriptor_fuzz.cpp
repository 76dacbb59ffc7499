// libFuzzer target: the input is descriptor text. Parsing must either work
// or throw kiln::Error with a one-line message; what parses must survive
// the CID rewrite and extent-name checks.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "kiln/common/error.h"
#include "vmdk/descriptor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kiln::block::vmdk;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  text = text.substr(0, text.find('\0'));  // as the parser: text ends at a NUL
  looks_like_descriptor(std::as_bytes(std::span(data, size)));
  try {
    Descriptor d = parse_descriptor(text, "fuzz.vmdk");
    Descriptor again = parse_descriptor(replace_cid(text, 0x1234abcd), "fuzz.vmdk");
    if (again.cid != 0x1234abcd || again.extents.size() != d.extents.size()) std::abort();
    for (const ExtentLine& extent : d.extents) {
      try {
        std::string path = resolve_extent_path("dir/fuzz.vmdk", extent.filename);
        if (path.find("/../") != std::string::npos || path.rfind("dir/", 0) != 0) std::abort();
      } catch (const kiln::Error&) {
      }
    }
  } catch (const kiln::Error& error) {
    if (std::string_view(error.what()).find('\n') != std::string_view::npos) std::abort();
  }
  return 0;
}
