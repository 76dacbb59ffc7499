// length, info, map, alloc: questions about the open image.
#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/common/error.h"
#include "output.h"

namespace kiln::io {
namespace {

// Allocation in the top node only (qemu's bdrv_is_allocated). Returns the
// run length, 0 at or past the end; `allocated` says which state it is.
uint64_t allocation_run(block::Node& node, uint64_t offset, uint64_t length, bool& allocated) {
  const uint64_t size = node.size();
  if (offset >= size || length == 0) return 0;
  const block::BlockStatus status = node.block_status(offset, std::min(length, size - offset));
  allocated = (status.flags & block::kStatusAllocated) != 0;
  return status.length;
}

// nlohmann::json sorts keys; qemu prints QAPI members in its own order.
// Known keys come first in that order, any others after them.
std::vector<std::string> ordered_keys(const nlohmann::json& object) {
  static const char* const kQemuOrder[] = {"compat", "data-file", "data-file-raw", "compression-type", "lazy-refcounts",
                                           "bitmaps", "refcount-bits", "encrypt", "corrupt", "extended-l2",
                                           "flags", "name", "granularity"};
  std::vector<std::string> keys;
  for (const char* key : kQemuOrder) {
    if (object.contains(key)) keys.emplace_back(key);
  }
  for (auto& [key, member] : object.items()) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  }
  return keys;
}

// qemu's human dump of format specific information.
void dump_json(std::string& text, const nlohmann::json& value, int indent) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  auto scalar = [](const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  if (value.is_object()) {
    for (const std::string& key : ordered_keys(value)) {
      const nlohmann::json& member = value[key];
      std::string name = key;
      std::replace(name.begin(), name.end(), '-', ' ');
      if (member.is_object() || member.is_array()) {
        text += fmt::format("{}{}:\n", pad, name);
        dump_json(text, member, indent + 4);
      } else {
        text += fmt::format("{}{}: {}\n", pad, name, scalar(member));
      }
    }
  } else if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      if (value[i].is_object() || value[i].is_array()) {
        text += fmt::format("{}[{}]:\n", pad, i);
        dump_json(text, value[i], indent + 4);
      } else {
        text += fmt::format("{}[{}]: {}\n", pad, i, scalar(value[i]));
      }
    }
  }
}

}  // namespace

int length_command(IoState& state, Args&) {
  out(format_bytes(static_cast<double>(state.device->size())) + "\n");
  return 0;
}

int info_command(IoState& state, Args&) {
  block::Node& node = state.device->node();
  std::string text = fmt::format("format name: {}\n", node.driver_name());
  const uint64_t cluster = node.cluster_size();
  nlohmann::json specific = node.format_specific_info();
  // qemu shows the union's "data" member; accept both shapes.
  if (specific.is_object() && specific.contains("data")) specific = specific["data"];
  uint64_t vm_state_offset = 0;
  if (node.driver_name() == "qcow2" && cluster >= 512) {
    // qcow2 keeps VM state after the last L1 entry covering the disk; an L2
    // table covers cluster/8 clusters (cluster/16 with extended L2 entries).
    const bool extended = specific.is_object() && specific.value("extended-l2", false);
    const uint64_t l2_span = cluster * (cluster / (extended ? 16 : 8));
    vm_state_offset = (node.size() + l2_span - 1) / l2_span * l2_span;
  }
  text += fmt::format("cluster size: {}\n", format_bytes(static_cast<double>(cluster)));
  text += fmt::format("vm state offset: {}\n", format_bytes(static_cast<double>(vm_state_offset)));
  if (!specific.is_null()) {
    text += "Format specific information:\n";
    dump_json(text, specific, 4);
  }
  out(text);
  return 0;
}

int map_command(IoState& state, Args&) {
  block::Node& node = state.device->node();
  uint64_t offset = 0;
  uint64_t remaining = node.size();
  try {
    while (remaining > 0) {
      bool allocated = false;
      uint64_t run = allocation_run(node, offset, remaining, allocated);
      if (run == 0) {
        err(fmt::format("{}: Unexpected end of image\n", program_invocation_short_name));
        return -EIO;
      }
      // Merge following runs in the same state into one line.
      while (run < remaining) {
        bool next_allocated = false;
        const uint64_t next = allocation_run(node, offset + run, remaining - run, next_allocated);
        if (next == 0 || next_allocated != allocated) break;
        run += next;
      }
      out(fmt::format("{} (0x{:x}) bytes {} at offset {} (0x{:x})\n", format_bytes(static_cast<double>(run)), run,
                      allocated ? "    allocated" : "not allocated", format_bytes(static_cast<double>(offset)), offset));
      offset += run;
      remaining -= run;
    }
  } catch (const Error& error) {
    err(fmt::format("{}: Failed to get allocation status: {}\n", program_invocation_short_name,
                    errno_text(error.errno_value() ? error.errno_value() : EIO)));
    return -EIO;
  }
  return 0;
}

int alloc_command(IoState& state, Args& args) {
  const int64_t start = parse_number(args[1]);
  if (start < 0) {
    print_number_error(start, args[1]);
    return -EINVAL;
  }
  int64_t count = 512;
  if (args.size() == 3) {
    count = parse_number(args[2]);
    if (count < 0) {
      print_number_error(count, args[2]);
      return -EINVAL;
    }
  }
  block::Node& node = state.device->node();
  uint64_t offset = static_cast<uint64_t>(start);
  uint64_t remaining = static_cast<uint64_t>(count);
  uint64_t allocated_bytes = 0;
  try {
    while (remaining > 0) {
      bool allocated = false;
      const uint64_t run = allocation_run(node, offset, remaining, allocated);
      if (run == 0) {  // the end of the image: the count shrinks to what exists
        count -= static_cast<int64_t>(remaining);
        break;
      }
      if (allocated) allocated_bytes += run;
      offset += run;
      remaining -= run;
    }
  } catch (const Error& error) {
    out(fmt::format("is_allocated failed: {}\n", errno_text(error.errno_value() ? error.errno_value() : EIO)));
    return -EIO;
  }
  out(fmt::format("{}/{} bytes allocated at offset {}\n", allocated_bytes, count, format_bytes(static_cast<double>(start))));
  return 0;
}

}  // namespace kiln::io
