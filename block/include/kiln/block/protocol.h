// Protocol nodes: where bytes live. `file` now; `nbd` joins with kiln-nbd.
#pragma once

#include <memory>
#include <string>

#include "kiln/block/node.h"
#include "kiln/block/types.h"

namespace kiln::block {

struct ProtocolOptions {
  bool read_only = false;
  CacheMode cache = CacheMode::Writeback;
  bool force_share = false;
  bool locking = true;
  bool create = false;  // create (or truncate) the file
};

// Opens the protocol node for `filename` (a path, later also nbd:// URIs).
std::unique_ptr<Node> open_protocol(const std::string& filename, const ProtocolOptions& options);

// The permission names of qemu's image locking, for messages and tests.
enum class Permission : unsigned { ConsistentRead = 0, Write = 1, WriteUnchanged = 2, Resize = 3 };

}  // namespace kiln::block
